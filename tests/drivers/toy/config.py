"""One toy PLC: where it listens, the environment variable of its token, how often to poll, its tags."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ToyTag(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^\S+$")
    writable: bool = False


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the token's variable
    poll_interval_s: float = Field(default=0.1, ge=0.01, le=60, allow_inf_nan=False)
    timeout_s: float = Field(default=1.0, ge=0.01, le=60, allow_inf_nan=False)
    tags: list[ToyTag] = Field(min_length=1)

    @property
    def endpoint(self) -> str:
        return f"toy://{self.host}:{self.port}"

    def acquisition_interval_s(self) -> float:
        return self.poll_interval_s

    def write_problem(self, tag: str, value: bool | int | float) -> str | None:
        return None  # every toy value is a float

    def counter_problem(self, tag: str, wrap: int) -> str | None:
        return None if wrap <= 1 << 53 else f"{wrap} does not fit a toy float exactly; expected <= 2**53"

    def value_kind(self, tag: str) -> Literal["number"]:
        return "number"
