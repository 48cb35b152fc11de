"""Built-in model zoo: architectures defined in code with seeded random weights, so nothing is downloaded."""
