"""Encrypted inference for Gluon models with CKKS (TenSEAL)."""
