"""Synthetic FaceScape-layout captures with exact ground truth (see gen_synthetic.py)."""
