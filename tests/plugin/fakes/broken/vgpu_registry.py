"""Test double of a vgpu_registry extension that cannot load (see ../README.md)."""

raise ImportError("vgpu_registry/_native.abi3.so: undefined symbol: PyFake_Symbol (test double)")
