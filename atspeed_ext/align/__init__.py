"""Draft alignment (method.md §5): teacher data from the target, the alignment objectives, the draft trainer."""
