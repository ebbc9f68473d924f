"""XAPI simulator for vgpu-registry's tests (Python standard library only).

Run it with ``PYTHONPATH=tests python3 -m xapi_sim serve …`` (see README.md); drive it from pytest
through :mod:`xapi_sim.harness`.
"""

__version__ = "1.0"
