"""Distillation: ask a teacher, keep its verified traces with their provenance, write the trace
file and its data card."""
