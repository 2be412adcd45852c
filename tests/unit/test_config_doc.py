"""docs/configuration.md is generated from Settings' field descriptions: committed and current."""
import pathlib

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from tools import gen_config_doc

ROOT = pathlib.Path(__file__).parents[2]


def test_the_committed_page_is_the_generated_one():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == gen_config_doc.render(), "regenerate it: make docs"


def test_every_setting_is_a_row_with_its_variable_default_and_description():
    class Example(BaseSettings):
        images_bucket: str = Field(description="where | the images go")
        rate_safety: float = Field(0.95, description="fraction aimed at")
        max_wait_seconds: float = Field(30.0, description="longest wait")
        daily_budget_usd: float | None = Field(None, description="spend limit")
        batch_lane_enabled: bool = Field(True, description="batch lane on")

    rows = [line for line in gen_config_doc.render(Example).splitlines() if line.startswith("| `")]

    assert rows == [
        "| `IMAGES_BUCKET` | str | (required) | where \\| the images go |",
        "| `RATE_SAFETY` | float | `0.95` | fraction aimed at |",
        "| `MAX_WAIT_SECONDS` | float | `30` | longest wait |",
        "| `DAILY_BUDGET_USD` | float | (unset) | spend limit |",
        "| `BATCH_LANE_ENABLED` | bool | true | batch lane on |",
    ]


def test_a_setting_without_a_description_is_refused():
    class Undocumented(BaseSettings):
        work_topic: str = "imagefleet-work"

    with pytest.raises(ValueError, match="Settings.work_topic has no description"):
        gen_config_doc.render(Undocumented)
