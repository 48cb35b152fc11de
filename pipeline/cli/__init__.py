"""The command line's own floor, above every step: parsing flag values and drawing progress on a console."""
