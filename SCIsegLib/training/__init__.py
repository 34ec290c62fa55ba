"""Active learning: nnU-Net datasets, export of corrections, fine-tuning."""
