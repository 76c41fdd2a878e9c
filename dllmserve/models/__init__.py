"""Model definitions (LLaDA, Dream) and the Hugging Face checkpoint loader."""
