"""Public-domain text shipped as the default corpus."""
