"""The keystore demo service: a FastAPI app guarded by keystore."""
