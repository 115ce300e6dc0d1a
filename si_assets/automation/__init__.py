"""How rounds start: the jobs, the schedule, the new-images sensor and the automation sensor."""

from si_assets.automation.jobs import bootstrap_job, improvement_round_job, round_run_config
from si_assets.automation.triggers import automation_sensor, improvement_round_schedule, new_images_sensor

__all__ = [
    "automation_sensor",
    "bootstrap_job",
    "improvement_round_job",
    "improvement_round_schedule",
    "new_images_sensor",
    "round_run_config",
]
