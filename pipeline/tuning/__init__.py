"""Tuning on the board over TVM RPC: MetaSchedule search, the RPC tracker and server, and the board Python."""
