"""Issue 7: the fault and abuse suite (crashes, outages, E2EE faults, hostile input)."""
