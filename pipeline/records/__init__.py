"""Tuning records: the store in records/, semantic workload keys, and the coverage table of a build."""
