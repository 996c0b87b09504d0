"""Nipype interfaces of disarm-pipeline (small SimpleInterface classes)."""
