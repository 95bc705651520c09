"""Column mapping: which file column feeds which lead field; common English and Chinese headers auto-detected.

A YAML mapping file overrides the detection::

    columns:            # field: header in the file
      company: Firm
      phone: Mobile No.
    default_region: CN  # region for phone numbers written without +country code
    defaults:           # values for fields the file lacks
      source: trade_show
    encoding: gbk       # optional; detected otherwise
    delimiter: ";"      # optional; detected otherwise
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
import yaml

from leadpilot.crm.errors import Invalid

# Every field an import can fill, with the headers recognised for it (compared case- and space-folded).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "company": (
        "company",
        "company name",
        "account",
        "account name",
        "organization",
        "organisation",
        "business",
        "merchant",
        "firm",
        "公司",
        "公司名称",
        "企业",
        "企业名称",
        "商户",
        "商户名称",
        "商家",
        "客户名称",
        "单位",
    ),
    "contact_name": (
        "name",
        "contact",
        "contact name",
        "full name",
        "person",
        "customer name",
        "联系人",
        "联系人姓名",
        "姓名",
        "客户姓名",
    ),
    "phone": (
        "phone",
        "phone number",
        "mobile",
        "mobile phone",
        "cell",
        "cellphone",
        "tel",
        "telephone",
        "手机",
        "手机号",
        "手机号码",
        "电话",
        "联系电话",
        "电话号码",
        "联系方式",
    ),
    "email": ("email", "e-mail", "email address", "mail", "邮箱", "电子邮箱", "电子邮件", "邮件"),
    "product_line": (
        "product",
        "product line",
        "line of business",
        "category",
        "service",
        "产品",
        "产品线",
        "业务线",
        "类目",
        "业务",
    ),
    "source": ("source", "lead source", "channel", "origin", "来源", "渠道", "线索来源", "客户来源"),
    "region": ("region", "city", "area", "territory", "location", "地区", "城市", "区域", "所在地"),
    "budget": ("budget", "amount", "deal size", "deal value", "value", "预算", "金额", "预算金额"),
    "industry": ("industry", "sector", "行业", "所属行业"),
    "company_size": ("size", "company size", "employees", "headcount", "规模", "公司规模", "企业规模"),
    "title": ("title", "subject", "opportunity", "opportunity name", "lead name", "标题", "商机", "商机名称", "需求"),
    "notes": ("notes", "note", "comment", "comments", "description", "remarks", "备注", "说明", "描述"),
    "external_id": ("id", "external id", "lead id", "ref", "reference", "编号", "线索编号", "线索id"),
    "consent": ("consent", "marketing consent", "同意", "授权", "是否同意"),
    "do_not_call": ("do not call", "dnc", "do_not_call", "no call", "拒绝来电", "勿扰", "免打扰"),
}
FIELDS = tuple(SYNONYMS)
_FOLD = re.compile(r"[\s_\-./:：（）()]+")


def fold(header: str) -> str:
    """A header folded for matching: lower case, no spaces, underscores, dashes or brackets."""
    return _FOLD.sub("", header.strip().lower())


_LOOKUP = {fold(s): name for name, syns in SYNONYMS.items() for s in (name, *syns)}


@dataclass
class Mapping:
    """Field → column index, plus import options."""

    columns: dict[str, int]
    defaults: dict[str, str] = field(default_factory=dict)
    default_region: str | None = None
    unmapped_headers: list[str] = field(default_factory=list)


@dataclass
class MappingFile:
    """A parsed YAML mapping file."""

    columns: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    default_region: str | None = None
    encoding: str | None = None
    delimiter: str | None = None


def load_mapping_file(path: Path) -> MappingFile:
    """Parse and validate a mapping YAML; errors name the bad key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise Invalid(f"cannot read mapping file {path}: {exc}", field="mapping") from exc
    if not isinstance(data, dict):
        raise Invalid("mapping file must be a YAML mapping with 'columns', 'defaults', ...", field="mapping")
    known = {"columns", "defaults", "default_region", "encoding", "delimiter"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise Invalid(
            f"mapping file: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}", field="mapping"
        )
    result = MappingFile(
        default_region=data.get("default_region"), encoding=data.get("encoding"), delimiter=data.get("delimiter")
    )
    for section in ("columns", "defaults"):
        value = data.get(section) or {}
        if not isinstance(value, dict):
            raise Invalid(f"mapping file: {section!r} must map field names to values", field="mapping")
        for key, v in value.items():
            if key not in FIELDS:
                raise Invalid(
                    f"mapping file: {section}.{key} is not a lead field; fields: {', '.join(FIELDS)}", field="mapping"
                )
            getattr(result, section)[key] = str(v)
    if result.delimiter is not None and len(result.delimiter) != 1:
        raise Invalid("mapping file: delimiter must be one character", field="mapping")
    if result.default_region is not None:
        result.default_region = str(result.default_region).strip().upper()
        if result.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise Invalid(
                f"mapping file: default_region {data['default_region']!r} is not a two-letter region code "
                "such as CN or US",
                field="mapping",
            )
    return result


def build_mapping(headers: list[str], override: MappingFile | None = None) -> Mapping:
    """Match headers to fields (explicit overrides first, then known synonyms)."""
    columns: dict[str, int] = {}
    folded = [fold(h) for h in headers]
    if override:
        for name, header in override.columns.items():
            try:
                columns[name] = folded.index(fold(header))
            except ValueError:
                raise Invalid(
                    f"mapping file: column {header!r} for {name!r} is not in the file; headers are: "
                    + ", ".join(repr(h) for h in headers),
                    field="mapping",
                ) from None
    taken = set(columns.values())
    for index, key in enumerate(folded):
        field_name = _LOOKUP.get(key)
        if field_name and field_name not in columns and index not in taken:
            columns[field_name] = index
            taken.add(index)
    unmapped = [h for i, h in enumerate(headers) if i not in taken and h]
    if not ({"company", "contact_name"} & set(columns)) or not ({"phone", "email"} & set(columns)):
        raise Invalid(
            "cannot find the needed columns: a lead needs a company or contact name and a phone or e-mail. "
            f"Recognised: {', '.join(sorted(columns)) or 'none'}; headers: {', '.join(headers)}. "
            "Name them in a mapping file (--mapping).",
            field="mapping",
        )
    return Mapping(
        columns=columns,
        defaults=dict(override.defaults) if override else {},
        default_region=override.default_region if override else None,
        unmapped_headers=unmapped,
    )


def mapping_as_dict(mapping: Mapping, headers: list[str]) -> dict[str, Any]:
    """The mapping in readable form for summaries (field → header)."""
    return {name: headers[i] for name, i in sorted(mapping.columns.items())}
