"""Task descriptors: the JSON format, validation with field paths, sweeps, JSON Schema export."""

from descriptors.errors import DescriptorError
from descriptors.load import load_data, load_file, load_text, parse_json
from descriptors.schema import export_schema
from descriptors.specs import Descriptor, PlannedTask, to_specs

__all__ = [
    "Descriptor",
    "DescriptorError",
    "PlannedTask",
    "export_schema",
    "load_data",
    "load_file",
    "load_text",
    "parse_json",
    "to_specs",
]
