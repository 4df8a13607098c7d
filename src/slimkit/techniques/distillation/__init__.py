"""Knowledge distillation: teacher-student loss terms for the one training loop."""
