"""The mutable state one simulator app owns: its config, script, fault dice and request log."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.simulator.config import SimulatorConfig
from worker.simulator.faults import AnswerScript, FaultDice
from worker.simulator.recorder import RequestLog


@dataclass
class SimulatorState:
    """Everything the routes share; touched only from the server's event loop."""

    config: SimulatorConfig
    script: AnswerScript = field(default_factory=AnswerScript)
    dice: FaultDice = field(init=False)
    log: RequestLog = field(init=False)

    def __post_init__(self) -> None:
        self.dice = FaultDice(self.config.fault_rate, self.config.seed)
        self.log = RequestLog(self.config.request_log_limit)

    def reset(self) -> None:
        """Clear the script, the request log and the counts (the fault dice keep rolling)."""
        self.script.clear()
        self.log.clear()
