"""Build step: model file -> fused Relax module -> scheduled, cross-compiled library (with default and transferred schedules)."""
