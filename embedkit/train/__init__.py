"""Fine-tuning: data, losses, the training model, the Trainer, hard-negative mining."""
