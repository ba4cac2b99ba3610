"""Training: batches from the Shapes world, losses, hard-negative mining, the loop and its checkpoints."""
