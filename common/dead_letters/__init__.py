"""Dead letters: messages that failed for good, kept with their reason and attempt history."""
