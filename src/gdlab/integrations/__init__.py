"""Bridges to other tools (TensorBoard), each behind an optional extra: importing gdlab imports none of them."""
