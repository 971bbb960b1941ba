"""Reading and writing: user images, checkpoints, result tables, figures and run metadata."""
