"""OUT/: the one writer and typed reader of a compile's artifacts (placement.json,
schedule.json, trace.json, compile_log.json)."""
