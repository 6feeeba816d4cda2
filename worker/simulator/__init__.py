"""The GMI simulator: a real HTTP server speaking GMI Cloud's OpenAI-compatible API.

Used by tests (scripted faults, request log), local development without a key, and benchmarks.
"""

from worker.simulator.app import create_app
from worker.simulator.config import SimulatorConfig
from worker.simulator.server import SimulatorServer, run_simulator

__all__ = ["SimulatorConfig", "SimulatorServer", "create_app", "run_simulator"]
