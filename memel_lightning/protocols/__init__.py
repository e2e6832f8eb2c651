"""Runnable experimental protocols (the papers' own procedures), one module each."""
