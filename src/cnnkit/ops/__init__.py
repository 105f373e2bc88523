"""The math: one Function per operation family, each with its forward and backward.

Each file holds the formulas of a family (``conv``, ``pool``, ``linear``, ``activation``,
``normalization``, ``dropout``, ``loss``, ``shape``, ``elementwise``, ``reduction``); how the
heavy ones are made fast is one call away, in the array kernels (``cnnkit.nn._*``).
Functions take and return NumPy arrays; ``Function.apply`` wraps them in Tensors and records
the graph.
"""
