"""TVM releases side by side: which ones the pipeline supports, their environments, their differences."""
