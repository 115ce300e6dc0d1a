"""The base of every settings class: immutable once built, and no NaN or infinity passes validation (a NaN ratio or
learning rate would otherwise run a whole round before anything noticed)."""

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)
