"""Fixed synthetic inputs and stored golden outputs for the preprocessing tests."""
