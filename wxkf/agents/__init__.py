"""Human agents: handoff state, transcripts, accounts and the console."""
