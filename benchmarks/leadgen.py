"""Deterministic generator of realistic lead CSV files for the benchmarks (shared by both scripts).

Every row is built from a seeded ``random.Random`` plus its row index, so the same seed and size give a
byte-identical file. Phones and e-mail addresses are derived from the row index, so no two clean rows
collide by accident: the only merges in an import are the duplicates planted on purpose.

Row kinds:
  * clean     - a valid, unique lead (Chinese mobile or landline, or a US number, in many formats)
  * bad       - invalid on purpose: bad phone, missing name, bad e-mail, negative budget, or a mix
  * duplicate - a later copy of an earlier clean row, matching it by phone (reformatted) or by e-mail
                (different case), with a new id and sometimes a field the original lacked
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HEADERS = ["id", "company", "contact name", "phone", "email", "product line", "source", "city", "budget", "notes"]

PRODUCT_LINES = ["housing", "education", "insurance", "auto", "finance", "travel", "healthcare", "software"]
SOURCES = ["web_form", "trade_show", "referral", "cold_call", "百度推广", "抖音", "微信", "partner", "google_ads"]
CN_CITIES = ["上海", "北京", "深圳", "广州", "杭州", "成都", "Shanghai", "Beijing", "Shenzhen", "Wuhan", "南京"]
US_CITIES = ["New York", "San Francisco", "Chicago", "Boston", "Seattle", "Austin", "Denver", "Atlanta"]
CN_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
CN_GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "勇", "艳", "杰", "军", "强", "丽", "涛", "明", "超", "华"]
EN_FIRST = ["James", "Mary", "John", "Linda", "Robert", "Emily", "Michael", "Sarah", "David", "Laura", "Wei", "Ming"]
EN_LAST = ["Smith", "Johnson", "Brown", "Garcia", "Miller", "Davis", "Chen", "Wang", "Lee", "Walker", "Young"]
CN_CO_PLACE = ["上海", "北京", "深圳", "杭州", "苏州", "广州", "成都", "武汉"]
CN_CO_WORD = ["华信", "博远", "宏达", "新锐", "金桥", "天行", "中科", "恒通", "瑞丰", "嘉禾"]
CN_CO_KIND = ["科技", "贸易", "地产", "教育咨询", "保险代理", "汽车服务", "网络"]
CN_CO_FORM = ["有限公司", "股份有限公司", "有限责任公司", ""]
EN_CO_WORD = ["Acme", "Blue River", "Summit", "Northwind", "Pioneer", "Evergreen", "Atlas", "Redwood", "Keystone"]
EN_CO_KIND = ["Realty", "Learning", "Insurance", "Motors", "Capital", "Travel", "Health", "Software"]
EN_CO_FORM = ["Inc.", "LLC", "Ltd", "Corp.", "Co.", ""]
EMAIL_DOMAINS = ["qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "example.com", "corp.cn", "sina.com"]
NOTES = [
    "",
    "",
    "Asked for a call back next week",
    "想了解价格, 下周回电",
    'Interested in the "premium" plan, budget approved',
    "来自展会, 对方比较有意向",
    "Decision maker; prefers e-mail, not phone",
    "Line one of the note\nline two of the note",
    "已发资料，等待回复",
    "Competitor contract ends in Q3, follow up in June",
]
# Chinese mobile prefixes that are valid in libphonenumber's metadata.
CN_MOBILE = [
    *range(130, 140),
    *range(150, 154),
    *range(155, 160),
    *range(176, 179),
    *range(180, 190),
]
CN_LANDLINE_AREAS = ["10", "21", "20", "755", "571", "28"]  # Beijing, Shanghai, Guangzhou, Shenzhen, Hangzhou, Chengdu
US_AREAS = ["212", "415", "646", "312", "617", "206", "512", "303", "404", "213"]
US_EXCHANGES = [e for e in range(201, 1000) if e % 100 != 11 and e not in (555, 950, 958, 959, 976)]


@dataclass
class Spec:
    """What the generated file contains: exact counts an import of it must reproduce."""

    rows: int
    clean: int
    bad: int
    duplicates: int
    bad_kinds: Counter[str] = field(default_factory=Counter)
    duplicate_kinds: Counter[str] = field(default_factory=Counter)
    phone_kinds: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "clean_unique": self.clean,
            "bad": self.bad,
            "duplicates": self.duplicates,
            "bad_kinds": dict(sorted(self.bad_kinds.items())),
            "duplicate_kinds": dict(sorted(self.duplicate_kinds.items())),
            "phone_kinds": dict(sorted(self.phone_kinds.items())),
        }


def _cn_mobile(i: int) -> str:
    prefix = CN_MOBILE[i % len(CN_MOBILE)]
    subscriber = (i * 7919 + 13579) % 100_000_000  # 7919 is prime: unique for i < 10**8
    return f"{prefix}{subscriber:08d}"


def _format_cn_mobile(digits: str, style: int) -> str:
    a, b, c = digits[:3], digits[3:7], digits[7:]
    return [
        digits,
        f"{a} {b} {c}",
        f"{a}-{b}-{c}",
        f"+86 {a} {b} {c}",
        f"+86-{digits}",
        f"+86{digits}",
        f"(+86) {digits}",
        f"0086 {a} {b} {c}",
    ][style % 8]


def _cn_landline(i: int, style: int) -> str:
    area = CN_LANDLINE_AREAS[i % len(CN_LANDLINE_AREAS)]
    local = f"{2 + (i // 7) % 6}{(i * 104729) % 10_000_000:07d}"  # 8 digits; 104729 is prime: unique
    return [f"0{area}-{local}", f"+86 {area} {local}", f"(0{area}) {local}"][style % 3]


def _us_number(i: int) -> tuple[str, str, str]:
    exchange = US_EXCHANGES[i % len(US_EXCHANGES)]
    line = (i // len(US_EXCHANGES)) % 10_000
    area = US_AREAS[(i // (len(US_EXCHANGES) * 10_000) + i) % len(US_AREAS)]
    return area, f"{exchange:03d}", f"{line:04d}"


def _format_us(parts: tuple[str, str, str], style: int) -> str:
    a, e, n = parts
    return [
        f"+1 ({a}) {e}-{n}",
        f"+1-{a}-{e}-{n}",
        f"+1 {a}.{e}.{n}",
        f"+1{a}{e}{n}",
        f"001 {a} {e} {n}",
    ][style % 5]


def _company(rng: random.Random, i: int, chinese: bool) -> str:
    # The index makes the name unique (no accidental company + product line merges) yet realistic.
    if chinese:
        return f"{rng.choice(CN_CO_PLACE)}{rng.choice(CN_CO_WORD)}{rng.choice(CN_CO_KIND)}{i}号{rng.choice(CN_CO_FORM)}"
    return f"{rng.choice(EN_CO_WORD)} {rng.choice(EN_CO_KIND)} {i} {rng.choice(EN_CO_FORM)}".strip()


def _person(rng: random.Random, chinese: bool) -> str:
    if chinese:
        return rng.choice(CN_SURNAMES) + "".join(rng.choice(CN_GIVEN) for _ in range(rng.choice((1, 2))))
    return f"{rng.choice(EN_FIRST)} {rng.choice(EN_LAST)}"


def _budget(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return ""
    amount = rng.choice((5_000, 20_000, 50_000, 120_000, 300_000, 800_000, 1_500_000))
    style = rng.randrange(6)
    if style == 0:
        return f"{amount}"
    if style == 1:
        return f"{amount:,}"
    if style == 2:
        return f"¥{amount / 10_000:g}万"
    if style == 3:
        return f"{amount / 1000:g}k"
    if style == 4:
        return f"{amount} 元"
    return f"${amount:,}"


def _clean_row(rng: random.Random, i: int, spec: Spec) -> dict[str, str]:
    kind = rng.random()
    chinese = kind < 0.75
    row = {
        "id": f"L{i:07d}",
        "company": _company(rng, i, chinese) if rng.random() < 0.9 else "",
        "contact name": _person(rng, chinese),
        "phone": "",
        "email": "",
        "product line": PRODUCT_LINES[(i // 2 * 7 + i % 2) % len(PRODUCT_LINES)],
        "source": rng.choice(SOURCES),
        "city": rng.choice(CN_CITIES if chinese else US_CITIES) if rng.random() < 0.9 else "",
        "budget": _budget(rng),
        "notes": rng.choice(NOTES),
    }
    has_phone, has_email = rng.random() < 0.93, rng.random() < 0.7
    if not (has_phone or has_email):
        has_phone = True
    if has_phone:
        style = rng.randrange(40)
        if not chinese:
            row["phone"] = _format_us(_us_number(i), style)
            spec.phone_kinds["us"] += 1
        elif kind < 0.68:
            row["phone"] = _format_cn_mobile(_cn_mobile(i), style)
            spec.phone_kinds["cn_mobile"] += 1
        else:
            row["phone"] = _cn_landline(i, style)
            spec.phone_kinds["cn_landline"] += 1
    if has_email:
        local = rng.choice(("wang", "li", "zhang", "sales", "info", "j.smith", "m.chen", "contact"))
        row["email"] = f"{local}.{i}@{rng.choice(EMAIL_DOMAINS)}"
    return row


_BAD_PHONES = ["138-1234-567", "12345", "call me", "+1 (999) 123-4567", "000-0000-0000", "+86 123 4567 8901"]
_BAD_EMAILS = ["wang.wei@", "john at example.com", "a@b", "li@@163.com", "sales@qq"]
_BAD_BUDGETS = ["-5000", "-1.2万", "-300,000", "-8k"]
BAD_KINDS = ("bad_phone", "missing_name", "bad_email", "negative_budget")


def _make_bad(rng: random.Random, row: dict[str, str], spec: Spec) -> dict[str, str]:
    kinds = [rng.choice(BAD_KINDS)]
    if rng.random() < 0.2:  # mixed: two problems in one row
        kinds.append(rng.choice([k for k in BAD_KINDS if k != kinds[0]]))
    for kind in kinds:
        if kind == "bad_phone":
            row["phone"] = rng.choice(_BAD_PHONES)
        elif kind == "missing_name":
            row["company"] = ""
            row["contact name"] = ""
        elif kind == "bad_email":
            row["email"] = rng.choice(_BAD_EMAILS)
        else:
            row["budget"] = rng.choice(_BAD_BUDGETS)
    spec.bad_kinds["+".join(sorted(kinds)) if len(kinds) > 1 else kinds[0]] += 1
    return row


def _reformat_phone(phone: str, rng: random.Random) -> str:
    digits = "".join(ch for ch in phone if ch.isdigit())
    if phone.startswith(("+1", "001")):
        national = digits[-10:]
        return _format_us((national[:3], national[3:6], national[6:]), rng.randrange(5))
    if len(digits) >= 11 and digits[-11] == "1":  # a Chinese mobile
        return _format_cn_mobile(digits[-11:], rng.randrange(8))
    return phone  # landline: keep as written


def _make_duplicate(rng: random.Random, i: int, original: dict[str, str], spec: Spec) -> dict[str, str]:
    row = dict(original)
    row["id"] = f"L{i:07d}"
    row["source"] = rng.choice(SOURCES)
    if original["phone"] and (not original["email"] or rng.random() < 0.6):
        row["phone"] = _reformat_phone(original["phone"], rng)
        row["email"] = ""
        kind = "same_phone"
    else:
        row["email"] = original["email"].upper()
        row["phone"] = ""
        kind = "same_email"
    if not original["budget"]:
        row["budget"] = "¥30万"
        kind += "+adds_budget"
    elif not original["notes"]:
        row["notes"] = "Duplicate enquiry from another channel"
        kind += "+adds_notes"
    spec.duplicate_kinds[kind] += 1
    return row


def generate(path: Path, rows: int, *, seed: int = 42, bad_share: float = 0.05, dup_share: float = 0.05) -> Spec:
    """Write a lead CSV of ``rows`` data rows; returns the exact counts planted in it."""
    rng = random.Random(seed)
    n_bad, n_dup = round(rows * bad_share), round(rows * dup_share)
    # Duplicates need an earlier clean row: keep them out of the first rows.
    first_dup = min(rows - 1, max(10, rows // 50))
    positions = list(range(first_dup, rows))
    rng.shuffle(positions)
    dup_at = set(positions[:n_dup])
    rest = [p for p in range(rows) if p not in dup_at]
    bad_at = set(rng.sample(rest, n_bad))
    spec = Spec(rows=rows, clean=rows - n_bad - n_dup, bad=n_bad, duplicates=n_dup)
    originals: list[dict[str, str]] = []
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADERS)
        writer.writeheader()
        for i in range(rows):
            if i in dup_at:
                row = _make_duplicate(rng, i, rng.choice(originals), spec)
            else:
                row = _clean_row(rng, i, spec)
                if i in bad_at:
                    row = _make_bad(rng, row, spec)
                else:
                    originals.append(row)
            writer.writerow(row)
    return spec
