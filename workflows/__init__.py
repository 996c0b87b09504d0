"""Nipype workflow builders (``init_*_wf``) of disarm-pipeline."""
