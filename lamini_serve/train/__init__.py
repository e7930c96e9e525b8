"""`lamini train`: fine-tune a herd of students (both families) on the teacher's answers."""
