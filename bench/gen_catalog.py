"""Synthetic drama catalogs in the schema of the MyDramaList scrape (``dramas.json``).

Usage::

    python -m bench.gen_catalog --count 100000 --seed 42 --out /tmp/catalog.json

The output is a JSON array of records with exactly the keys of the real data. The
distributions are meant to look like the real catalog as far as the server cares: Zipf-like
genre, tag and actor popularity, a weighted country mix, ratings around 7.5, log-normal
watcher counts, a ``popularity_rank`` permutation correlated with the watchers, MDL-style
``aired_date`` strings (single dates, ranges and a few unparseable ones), titles with accents,
mixed case and occasional duplicates.

Everything is driven by one ``random.Random(seed)``; the same ``(count, seed)`` always yields
the same catalog.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["GENRES", "TAGS", "generate", "main"]

# --------------------------------------------------------------------------------------------
# Vocabularies (fixed, independent of the seed). Lists are in decreasing popularity order.
# --------------------------------------------------------------------------------------------

GENRES: tuple[str, ...] = (
    "Romance", "Drama", "Comedy", "Youth", "Fantasy", "Action", "Mystery", "Thriller",
    "Life", "Historical", "Melodrama", "Crime", "Family", "Friendship", "Business",
    "Supernatural", "Wuxia", "Medical", "Psychological", "Horror", "Sci-Fi", "Law", "Music",
    "Sports", "School", "Food", "Political", "Military", "Adventure", "Tragedy", "Sitcom",
    "Martial Arts", "Documentary", "Mature", "War", "Investigation", "Workplace", "Suspense",
    "Detective", "Revenge", "Slice of Life", "Time Travel", "Reincarnation", "Xianxia",
    "Coming of Age", "Idol", "Office", "Boys Love", "Girls Love", "Variety", "Reality",
    "Talk Show", "Animation", "Game", "Survival", "Zombie", "Vampire", "Romantic Comedy",
    "Noir", "Heist", "Spy", "Legal", "Parenting", "Cooking", "Travel", "Dance", "Western",
    "Disaster", "Satire", "Mythology",
)  # fmt: skip

_TAG_BASE: tuple[str, ...] = (
    "Strong Female Lead", "Smart Male Lead", "Nice Male Lead", "Cold Man/Warm Woman",
    "Enemies To Lovers", "Friends To Lovers", "Contract Relationship", "Fake Relationship",
    "Slow Burn Romance", "Love Triangle", "Second Chance Romance", "Secret Relationship",
    "Workplace Romance", "Age Gap", "First Love", "Unrequited Love", "Childhood Friends",
    "Time Travel", "Reincarnation", "Body Swap", "Amnesia", "Revenge", "Murder", "Serial Killer",
    "Conspiracy", "Corruption", "Chaebol", "Rich Man/Poor Woman", "Hidden Identity",
    "Cohabitation", "Sismance", "Bromance", "Found Family", "Father-Son Relationship",
    "Mother-Daughter Relationship", "Sibling Relationship", "Friendship", "Coming Of Age",
    "High School", "University", "Hospital", "Doctor", "Lawyer", "Prosecutor", "Detective",
    "Police", "Journalist", "Idol", "Music", "Band", "Dance", "Cooking", "Webtoon Adaptation",
    "Novel Adaptation", "Manga Adaptation", "Remake", "Based On True Story", "Zombie",
    "Vampire", "Ghost", "Goblin", "Nine-Tailed Fox", "Gumiho", "Immortal", "Cultivation",
    "Martial Arts", "Sword Fighting", "Palace Intrigue", "Royal Family", "Joseon Dynasty",
    "Goryeo Dynasty", "Tang Dynasty", "Song Dynasty", "Ming Dynasty", "Qing Dynasty",
    "Military", "Spy", "Hacker", "Heist", "Gangster", "Mafia", "Prison", "Survival", "Game",
    "Deafness", "Sign Language", "Terminal Illness", "Disability", "Healing", "Grief",
    "Death", "Afterlife", "Small Town", "Countryside", "Seoul", "Shanghai", "Tokyo", "Bangkok",
    "1980s", "1990s", "2000s", "Flashback", "Multiple Couples", "Ensemble Cast", "Anthology",
    "Short Episodes", "Slice Of Life", "Tearjerker", "Heartwarming", "Dark Comedy", "Satire",
    "Violence", "Psychological Thriller", "Plot Twist", "Unreliable Narrator", "Mind Games",
    "Politics", "Election", "Business", "Startup", "Fashion", "Entertainment Industry",
    "Actor", "Writer", "Artist", "Athlete", "Baseball", "Basketball", "Soccer", "Volleyball",
    "Swimming", "Esports", "Chess", "Go", "Gambling", "Debt", "Poverty", "Class Difference",
    "Bullying", "School Violence", "Trauma", "Mental Health", "Single Parent", "Divorce",
    "Marriage", "Contract Marriage", "Arranged Marriage", "Pregnancy", "Child From The Future",
    "Genius", "Superpower", "Mind Reading", "Precognition", "Alternate Universe", "Parallel World",
    "Virtual Reality", "Artificial Intelligence", "Robot", "Space", "Apocalypse", "Virus",
)  # fmt: skip

_TAG_ADJ: tuple[str, ...] = (
    "Secret", "Hidden", "Cold", "Warm", "Rich", "Poor", "Cheerful", "Gloomy", "Clumsy", "Genius",
    "Arrogant", "Kind", "Cunning", "Naive", "Loyal", "Ruthless", "Lonely", "Famous", "Sick",
    "Immortal", "Royal", "Fake", "Former", "Reluctant", "Bickering", "Possessive", "Shy",
    "Obsessive", "Wealthy", "Tragic", "Rebellious", "Brilliant", "Goofy", "Stoic", "Sassy",
    "Ambitious", "Mysterious", "Righteous", "Cynical", "Playful",
)  # fmt: skip

_TAG_NOUN: tuple[str, ...] = (
    "Male Lead", "Female Lead", "Second Lead", "Villain", "Mentor", "Sidekick", "Heir",
    "Heiress", "Prince", "Princess", "Emperor", "Empress", "General", "Assassin", "Doctor",
    "Lawyer", "Teacher", "Student", "Chef", "Idol", "Singer", "Writer", "Detective", "Boss",
    "Secretary", "Bodyguard", "Neighbor", "Roommate", "Rival", "Twin", "Stepmother",
    "Grandmother", "Father", "Mother", "Sister", "Brother", "Ghost", "Fox Spirit", "Demon",
    "Goddess", "Hacker", "Pilot", "Soldier", "Priest", "Scientist", "Artist", "Streamer",
    "Athlete", "Gambler", "Orphan",
)  # fmt: skip


def _build_tags() -> tuple[str, ...]:
    tags = list(_TAG_BASE)
    seen = set(tags)
    # Interleave adjectives and nouns so that the most popular combined tags are varied.
    for noun, adj in itertools.product(_TAG_NOUN, _TAG_ADJ):
        tag = f"{adj} {noun}"
        if tag not in seen:
            seen.add(tag)
            tags.append(tag)
        if len(tags) >= 2000:
            break
    return tuple(tags)


TAGS: tuple[str, ...] = _build_tags()

COUNTRIES: tuple[tuple[str, float], ...] = (
    ("South Korea", 38.0),
    ("China", 30.0),
    ("Japan", 11.0),
    ("Taiwan", 5.0),
    ("Thailand", 6.0),
    ("Philippines", 3.0),
    ("Hong Kong", 2.5),
    ("Vietnam", 1.0),
    ("Singapore", 1.0),
    ("Indonesia", 1.0),
    ("Malaysia", 0.8),
    ("India", 0.7),
)

NETWORKS: dict[str, tuple[str, ...]] = {
    "South Korea": ("tvN", "KBS2", "MBC", "SBS", "JTBC", "OCN", "ENA", "Netflix", "Disney+",
                    "Coupang Play", "Wavve", "TVING"),
    "China": ("iQiyi", "Youku", "Tencent Video", "Mango TV", "Hunan TV", "Dragon TV", "CCTV",
              "Zhejiang TV", "BTV", "Bilibili"),
    "Japan": ("NHK", "Fuji TV", "TBS", "TV Asahi", "Nippon TV", "TV Tokyo", "WOWOW", "Netflix"),
    "Taiwan": ("PTS", "CTV", "TTV", "SET TV", "GTV", "Netflix"),
    "Thailand": ("GMM 25", "Channel 3", "One 31", "WeTV", "Channel 7"),
    "Philippines": ("ABS-CBN", "GMA", "iWantTFC", "Netflix"),
    "Hong Kong": ("TVB Jade", "ViuTV", "Netflix"),
    "Vietnam": ("VTV3", "HTV7", "Netflix"),
    "Singapore": ("Channel 8", "mewatch", "Netflix"),
    "Indonesia": ("Vidio", "RCTI", "Netflix"),
    "Malaysia": ("TV3", "Astro", "Netflix"),
    "India": ("Netflix", "Prime Video", "Star Plus"),
}  # fmt: skip

TYPES: tuple[tuple[str, float], ...] = (
    ("Drama", 80.0),
    ("Movie", 12.0),
    ("TV Show", 5.0),
    ("Special", 3.0),
)

CONTENT_RATINGS: tuple[tuple[str, float], ...] = (
    ("15+ - Teens 15 or older", 40.0),
    ("13+ - Teens 13 or older", 30.0),
    ("18+ Restricted (violence & profanity)", 10.0),
    ("Not Yet Rated", 15.0),
    ("G - All Ages", 4.0),
    ("R - Restricted Screening (nudity & violence)", 1.0),
)

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_AIRED_ON_PATTERNS: tuple[tuple[tuple[int, ...], float], ...] = (
    ((0, 1), 18.0),
    ((2, 3), 18.0),
    ((4,), 14.0),
    ((5, 6), 18.0),
    ((4, 5), 8.0),
    ((0, 1, 2, 3), 8.0),
    ((0, 1, 2, 3, 4, 5, 6), 10.0),
    ((2,), 3.0),
    ((5,), 3.0),
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_UNPARSEABLE_DATES = ("?", "TBA", "?", "TBA", "", "Coming soon", "2026")

# Title words, most popular first. "Love" is by design the most frequent title word.
_TITLE_NOUNS: tuple[str, ...] = (
    "Love", "Heart", "Moon", "Dream", "Night", "Spring", "Star", "Flower", "Destiny", "Secret",
    "Summer", "Sky", "Rain", "Blossom", "Light", "Sword", "Kingdom", "Palace", "Memory", "Queen",
    "King", "Prince", "Princess", "Doctor", "Detective", "Hero", "Legend", "Youth", "Garden",
    "Road", "Wind", "Fire", "Shadow", "Snow", "River", "Ocean", "City", "Home", "Family",
    "Promise", "Song", "Melody", "Time", "Day", "Season", "Winter", "Autumn", "Phoenix",
    "Dragon", "Fox", "Tiger", "Butterfly", "Lotus", "Jade", "Wolf", "Ghost", "Mask", "Mirror",
    "Letter", "Diary", "Café", "Bakery", "Hospital", "School", "Office", "Hotel", "Island",
    "Mountain", "Forest", "Sea", "Storm", "Thunder", "Dawn", "Sunset", "Horizon", "Journey",
    "Voyage", "Game", "Trap", "Crime", "Law", "Justice", "Revenge", "Empire", "Dynasty",
    "Clan", "Sect", "Fate", "Soul", "Spirit", "Angel", "Demon", "Goddess", "Warrior",
    "Assassin", "General", "Empress", "Concubine", "Scholar", "Chef", "Idol", "Runner",
    "Watermelon", "Lullaby", "Serenade", "Rhapsody", "Déjà Vu", "Rendez-vous", "Naïveté",
)  # fmt: skip
_TITLE_ADJS: tuple[str, ...] = (
    "Beautiful", "Secret", "Lovely", "Eternal", "Hidden", "Last", "First", "Little", "Golden",
    "Sweet", "Dark", "Crazy", "Perfect", "Lost", "Silent", "Wild", "Brave", "Shining",
    "Twinkling", "Strong", "Weak", "Forbidden", "Fallen", "Lonely", "Scarlet", "Blue", "Red",
    "Pure", "Noble", "Mysterious", "Magical", "Broken", "Endless", "Infinite", "Distant",
    "Flower", "Glorious", "Rich", "Poor", "Young", "Old", "Pretty", "Wicked", "Blessed",
    "Dangerous", "Clumsy", "Fierce", "Gentle", "Crystal", "Frozen", "Burning", "Rising",
    "Hopeful", "Fragile", "Invincible", "Reckless", "Royal",
)  # fmt: skip
_TITLE_PLACES: tuple[str, ...] = (
    "Seoul", "Shanghai", "Tokyo", "Bangkok", "Taipei", "Manila", "Jeju", "Busan", "Beijing",
    "Chang'an", "Kyoto", "Osaka", "Hanoi", "Paris", "the City", "the Palace", "the Jianghu",
    "Hong Kong", "Jakarta", "Singapore", "São Paulo", "Málaga",
)  # fmt: skip
_TITLE_PATTERNS: tuple[tuple[str, float], ...] = (
    ("{A} {N}", 30.0),
    ("The {A} {N}", 12.0),
    ("{N} of {N2}", 12.0),
    ("My {A} {N}", 6.0),
    ("{N}", 8.0),
    ("{N} in {P}", 6.0),
    ("{A} {N} in {P}", 4.0),
    ("When the {N} {V}", 5.0),
    ("{N} and {N2}", 5.0),
    ("The {N} Who {V2}", 5.0),
    ("{A} {N} {Num}", 4.0),
    ("{N}: The {A} {N2}", 3.0),
)
_VERBS = (
    "Falls", "Blooms", "Rises", "Returns", "Sings", "Shines", "Fades", "Calls", "Waits",
    "Sleeps", "Burns", "Dances", "Weeps", "Whispers",
)  # fmt: skip
_VERBS2 = (
    "Loved Me", "Fell From the Sky", "Came Back", "Stole My Heart", "Knew Too Much",
    "Lived Twice", "Could Not Forget", "Ran Away", "Saved the World", "Hid the Truth",
)  # fmt: skip

# Romanised syllables for East-Asian-sounding names.
_SURNAMES_KR = (
    "Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang", "Lim", "Han", "Oh",
    "Seo", "Shin", "Kwon", "Hwang", "Ahn", "Song", "Jeon", "Hong", "Ryu", "Go", "Moon", "Yang",
    "Son", "Bae", "Baek", "Heo", "Nam", "Noh", "Ha", "Gong", "Byun", "Seol", "Ok",
)  # fmt: skip
_GIVEN_KR = (
    "Min", "Ji", "Seo", "Hyun", "Woo", "Jin", "Soo", "Young", "Eun", "Hye", "Joon", "Ho",
    "Yeon", "Ha", "Na", "Da", "Bin", "Kyung", "Sung", "Tae", "Yoon", "Jae", "Ah", "In",
    "Gyeol", "Chan", "Won", "Hee", "Rim", "Ra", "Bo", "Gun", "Hwan", "Shik", "Ok",
)  # fmt: skip
_SURNAMES_CN = (
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun",
    "Hu", "Zhu", "Gao", "Lin", "He", "Guo", "Ma", "Luo", "Liang", "Song", "Zheng", "Xie",
    "Han", "Tang", "Feng", "Yu", "Dong", "Xiao", "Cheng", "Cao", "Yuan", "Deng", "Bai", "Mu",
)  # fmt: skip
_GIVEN_CN = (
    "Wei", "Fang", "Na", "Min", "Jing", "Li", "Qiang", "Lei", "Jun", "Yang", "Yong", "Yan",
    "Jie", "Tao", "Ming", "Chao", "Xiu", "Xia", "Ping", "Gang", "Hua", "Yi", "Zhan", "Kai",
    "Ge", "Lu", "Si", "Yun", "Xi", "Ying", "Zi", "Han", "Chang", "Su", "Ni", "Huang",
)  # fmt: skip
_SURNAMES_JP = (
    "Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura",
    "Kobayashi", "Kato", "Yoshida", "Yamada", "Sasaki", "Yamaguchi", "Matsumoto", "Inoue",
    "Kimura", "Hayashi", "Shimizu", "Saito", "Ōno", "Kōda", "Ishikawa", "Ogawa",
)  # fmt: skip
_GIVEN_JP = (
    "Haruto", "Yuto", "Sota", "Ren", "Takumi", "Kaito", "Hina", "Yui", "Aoi", "Sakura", "Mei",
    "Riko", "Yuna", "Kenta", "Daiki", "Shun", "Ryo", "Kōki", "Yūki", "Mio", "Nana", "Emi",
)  # fmt: skip
_SURNAMES_TH = (
    "Srisuk", "Chaiyaporn", "Wongsawat", "Rattanakorn", "Boonmee", "Suwannarat", "Thongchai",
    "Kittisak", "Phromma", "Jaidee", "Saetang", "Charoen",
)  # fmt: skip
_GIVEN_TH = (
    "Win", "Bright", "Mew", "Gulf", "Tay", "New", "Off", "Gun", "Bible", "Build", "Mile",
    "Apo", "Baifern", "Yaya", "Mai", "Kao", "Nanon", "Ohm", "Fluke", "Earth", "Mix",
)  # fmt: skip
_SURNAMES_PH = ("Santos", "Reyes", "Cruz", "Bautista", "Garcia", "Mendoza", "Dela Cruz", "Ramos")
_GIVEN_PH = ("Kathryn", "Daniel", "Liza", "Enrique", "Nadine", "James", "Maja", "Joshua", "Andrea")

_NAME_STYLE: dict[str, str] = {
    "South Korea": "kr",
    "China": "cn",
    "Taiwan": "cn",
    "Hong Kong": "cn",
    "Singapore": "cn",
    "Malaysia": "cn",
    "Japan": "jp",
    "Thailand": "th",
    "Philippines": "ph",
    "Indonesia": "ph",
    "Vietnam": "cn",
    "India": "ph",
}

_ALT_NAME_FOREIGN = (
    "Dưa Hấu Lấp Lánh", "Melancia Cintilante", "Блискучий кавун", "Дорама", "אבטיח מנצנץ",
    "رحلة إلى الماضي", "ย้อนวัยใจสู้ฝัน", "Chuyện Đời", "Alegria da Vida", "Arti Kehidupan",
    "Coridoarele Spitalului", "Classe dos Heróis", "Eroul Vulnerabil", "A Caminho do Céu",
    "Hướng Tới Thiên Đường", "Alchemia Dusz", "Em Movimento", "Amor Eterno", "Любовь и судьба",
    "Sternenhimmel", "L'Été Éternel", "La Promesa", "Kalbin Sesi", "Cinta Abadi", "사랑의 불시착",
    "长相思", "恋は続くよどこまでも", "Nirvana", "Sæson 1", "Partie 1", "Temporada 2",
)  # fmt: skip

_DESC_OPENERS = (
    "In {year}, {name}, a {adj} {job}, {verb}.",
    "{name} has always been a {adj} {job} who {verb2}.",
    "After a {event}, {name} {verb}.",
    "When {name}, a {adj} {job}, meets {name2}, everything changes.",
    "Set in {place}, the story follows {name}, a {adj} {job}.",
)  # fmt: skip
_DESC_MIDDLES = (
    "{name2} is a {adj2} {job2} hiding a secret that could ruin them both.",
    "Together they must face {obstacle} before it is too late.",
    "But {name2}, the {adj2} {job2}, has other plans.",
    "As the truth slowly comes to light, old wounds reopen.",
    "Caught between duty and desire, {name} has to make an impossible choice.",
    "What begins as a reluctant partnership turns into something neither expected.",
    "Years later, a chance encounter in {place} brings them together again.",
    "Meanwhile, {name2} discovers {obstacle} hidden behind the family's fortune.",
    "With the help of loyal friends, {name} sets out to uncover the truth.",
    "Their paths cross again when {event} shakes the whole town.",
)  # fmt: skip
_DESC_JOBS = (
    "student", "doctor", "prosecutor", "chef", "idol trainee", "detective", "swordsman",
    "princess", "CEO", "webtoon artist", "nurse", "teacher", "reporter", "soldier", "heiress",
    "guitarist", "lawyer", "hacker", "cultivator", "courier",
)  # fmt: skip
_DESC_ADJS = (
    "determined", "cheerful", "cold-hearted", "brilliant", "clumsy", "lonely", "ambitious",
    "kind-hearted", "mysterious", "stubborn", "fearless", "gentle", "rebellious", "shy",
)  # fmt: skip
_DESC_VERBS = (
    "leads a double life as a model pupil by day and a musician by night",
    "is transported back in time after discovering a mysterious shop",
    "wakes up in the body of a stranger",
    "is framed for a crime they did not commit",
    "returns home to take over the family restaurant",
    "signs a contract marriage with a powerful heir",
    "loses every memory of the last ten years",
    "is hired to protect a famous actor",
)  # fmt: skip
_DESC_VERBS2 = (
    "dreamed of becoming the best in the country",
    "kept everyone at arm's length",
    "believed that romance is a waste of time",
    "lived by the rules",
    "wanted nothing more than a quiet life",
)  # fmt: skip
_DESC_EVENTS = (
    "tragic accident", "sudden scandal", "mysterious disappearance", "failed wedding",
    "painful breakup", "strange storm", "bankruptcy", "string of murders",
)  # fmt: skip
_DESC_OBSTACLES = (
    "a deadly conspiracy", "a powerful family's opposition", "an ancient curse",
    "a ruthless rival", "their own painful pasts", "a looming war", "a scandal",
)  # fmt: skip

_ROLE_TYPES_EXTRA = (("Support Role", 85.0), ("Guest Role", 15.0))
_IMG_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _zipf_cum_weights(n: int, s: float = 1.0, q: float = 0.0) -> list[float]:
    """Cumulative weights of a Zipf-Mandelbrot(s, q) law over ranks 1..n (for random.choices).

    ``q`` flattens the head: with ``q = 0`` this is plain Zipf, where the top item of a large
    vocabulary would appear in a large fraction of the records.
    """
    return list(itertools.accumulate(1.0 / ((i + q) ** s) for i in range(1, n + 1)))


def _cum(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    out = []
    dash = False
    for ch in ascii_text.lower():
        if ch.isalnum():
            out.append(ch)
            dash = False
        elif not dash and out:
            out.append("-")
            dash = True
    return "".join(out).strip("-") or "untitled"


class _Sampler:
    """Zipf sampling of ``k`` distinct items out of a ranked vocabulary."""

    __slots__ = ("_choices", "_cw", "_items", "_n")

    def __init__(self, rng: random.Random, items: Sequence[Any], cum_weights: list[float]):
        self._items = items
        self._cw = cum_weights
        self._n = len(items)
        self._choices = rng.choices

    def one(self) -> Any:
        return self._choices(self._items, cum_weights=self._cw)[0]

    def distinct(self, k: int) -> list[Any]:
        k = min(k, self._n)
        picked = list(dict.fromkeys(self._choices(self._items, cum_weights=self._cw, k=k + 2)))
        while len(picked) < k:
            for item in self._choices(self._items, cum_weights=self._cw, k=k):
                if item not in picked:
                    picked.append(item)
        return picked[:k]


def _image_code(rng: random.Random, length: int = 5) -> str:
    return "".join(rng.choices(_IMG_ALPHABET, k=length))


def _person_name(rng: random.Random, style: str) -> str:
    ch = rng.choice
    if style == "kr":
        return f"{ch(_SURNAMES_KR)} {ch(_GIVEN_KR)} {ch(_GIVEN_KR).lower()}".title()
    if style == "cn":
        if rng.random() < 0.5:
            return f"{ch(_SURNAMES_CN)} {ch(_GIVEN_CN)}"
        return f"{ch(_SURNAMES_CN)} {ch(_GIVEN_CN)} {ch(_GIVEN_CN)}"
    if style == "jp":
        return f"{ch(_SURNAMES_JP)} {ch(_GIVEN_JP)}"
    if style == "th":
        return f"{ch(_GIVEN_TH)} {ch(_SURNAMES_TH)}"
    return f"{ch(_GIVEN_PH)} {ch(_SURNAMES_PH)}"


def _format_date(year: int, month: int, day: int) -> str:
    return f"{_MONTHS[month]} {day}, {year}"


def _add_days(year: int, month: int, day: int, days: int) -> tuple[int, int, int]:
    day += days
    while True:
        mdays = _MONTH_DAYS[month] + (
            1 if month == 1 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 0
        )
        if day <= mdays:
            return year, month, day
        day -= mdays
        month += 1
        if month == 12:
            month = 0
            year += 1


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


def generate(count: int, seed: int = 42) -> list[dict[str, Any]]:
    """Generate ``count`` catalog records deterministically from ``seed``."""
    if count < 0:
        raise ValueError("count must be >= 0")
    rng = random.Random(seed)
    rand = rng.random
    randint = rng.randint
    choice = rng.choice
    choices = rng.choices
    gauss = rng.gauss
    lognorm = rng.lognormvariate

    genre_s = _Sampler(rng, GENRES, _zipf_cum_weights(len(GENRES), 1.0))
    tag_s = _Sampler(rng, TAGS, _zipf_cum_weights(len(TAGS), 1.0, 5.0))
    country_names = [c for c, _ in COUNTRIES]
    country_cw = _cum([w for _, w in COUNTRIES])
    type_names = [t for t, _ in TYPES]
    type_cw = _cum([w for _, w in TYPES])
    cr_names = [c for c, _ in CONTENT_RATINGS]
    cr_cw = _cum([w for _, w in CONTENT_RATINGS])
    aired_pats = [p for p, _ in _AIRED_ON_PATTERNS]
    aired_cw = _cum([w for _, w in _AIRED_ON_PATTERNS])
    title_pats = [p for p, _ in _TITLE_PATTERNS]
    title_cw = _cum([w for _, w in _TITLE_PATTERNS])
    noun_s = _Sampler(rng, _TITLE_NOUNS, _zipf_cum_weights(len(_TITLE_NOUNS), 0.8))
    adj_s = _Sampler(rng, _TITLE_ADJS, _zipf_cum_weights(len(_TITLE_ADJS), 0.6))
    extra_roles = [r for r, _ in _ROLE_TYPES_EXTRA]
    extra_roles_cw = _cum([w for _, w in _ROLE_TYPES_EXTRA])

    # ---- actor pool: ~count/2 actors, Zipf popularity, per-actor "home" name style ----------
    pool_size = max(50, count // 2)
    styles = [_NAME_STYLE[c] for c in country_names]
    actor_ids = rng.sample(range(1000, 1000 + pool_size * 20), pool_size)
    actors: list[tuple[str, str, str]] = []
    seen_names: set[str] = set()
    for aid in actor_ids:
        style = choices(styles, cum_weights=country_cw)[0]
        name = _person_name(rng, style)
        # Mostly unique names; a few homonyms remain (as on MDL). Small name spaces (e.g. the
        # Thai one) fall back to the large Korean and Chinese ones.
        for attempt in range(8):
            if name not in seen_names or rand() < 0.02:
                break
            name = _person_name(rng, style if attempt < 3 else ("kr", "cn")[attempt % 2])
        seen_names.add(name)
        actors.append(
            (
                name,
                f"https://i.mydramalist.com/{_image_code(rng)}_5s.jpg",
                f"https://mydramalist.com/people/{aid}-{_slugify(name)}",
            )
        )
    actor_s = _Sampler(rng, actors, _zipf_cum_weights(pool_size, 1.0, 50.0))

    # ---- pass 1: identities (url, title, cover) so recommendations can point at records ----
    drama_ids = rng.sample(range(1, max(1000, count * 8) + 1), count)
    titles: list[str] = []
    seen_titles: set[str] = set()
    for i in range(count):
        if i > 20 and rand() < 0.01:
            titles.append(titles[randint(0, i - 1)])  # duplicate title (remake, same name)
            continue
        for _ in range(4):
            title = choices(title_pats, cum_weights=title_cw)[0].format(
                A=adj_s.one(),
                N=noun_s.one(),
                N2=noun_s.one(),
                P=choice(_TITLE_PLACES),
                V=choice(_VERBS),
                V2=choice(_VERBS2),
                Num=randint(2, 4),
            )
            if title not in seen_titles:
                break
        else:
            # The combinatorial space is small for 100k records: disambiguate with a subtitle.
            title = f"{title}: {choice(_TITLE_ADJS)} {choice(_TITLE_NOUNS)}"
            if title in seen_titles:
                title = f"{title} {randint(2, 99)}"
        seen_titles.add(title)
        r = rand()
        if r < 0.03:
            title = title.lower()
        elif r < 0.05:
            title = title.upper()
        elif r < 0.08:
            title += f" {choice(('Season 2', 'Season 3', 'Part 2', 'Special', '2'))}"
        titles.append(title)
    urls = [
        f"https://mydramalist.com/{did}-{_slugify(t)}"
        for did, t in zip(drama_ids, titles, strict=True)
    ]
    covers = [f"https://i.mydramalist.com/{_image_code(rng)}_4f.jpg" for _ in range(count)]

    # ---- popularity: watchers log-normal; rank is a noisy ordering by watchers -------------
    watchers = [int(lognorm(7.0, 1.9)) + randint(0, 30) for _ in range(count)]
    noisy = [w * lognorm(0.0, 0.35) for w in watchers]
    order = sorted(range(count), key=noisy.__getitem__, reverse=True)
    ranks = [0] * count
    for rank, idx in enumerate(order, start=1):
        ranks[idx] = rank

    records: list[dict[str, Any]] = []
    for i in range(count):
        country = choices(country_names, cum_weights=country_cw)[0]
        style = _NAME_STYLE[country]
        dtype = choices(type_names, cum_weights=type_cw)[0]

        # genres: 1-5, Zipf; tags: 1-15, Zipf
        genres = genre_s.distinct(choices((1, 2, 3, 4, 5), cum_weights=(10, 30, 60, 85, 100))[0])
        tags = tag_s.distinct(randint(1, 15))

        # dates
        year = randint(1990, 2026) if rand() < 0.9 else randint(1965, 1989)
        month = randint(0, 11)
        day = randint(1, _MONTH_DAYS[month])
        r = rand()
        if r < 0.02:
            aired_date = choice(_UNPARSEABLE_DATES)
        elif dtype == "Movie" or r < 0.25:
            aired_date = _format_date(year, month, day)
        else:
            end = _add_days(year, month, day, randint(7, 200))
            aired_date = f"{_format_date(year, month, day)} - {_format_date(*end)}"

        if dtype == "Movie":
            episodes = 1
            minutes = randint(80, 150)
        elif dtype == "Special":
            episodes = randint(1, 4)
            minutes = randint(20, 90)
        else:
            episodes = choices(
                (randint(6, 12), randint(12, 16), randint(16, 24), randint(24, 60), 100),
                cum_weights=(20, 55, 75, 99, 100),
            )[0]
            minutes = randint(10, 95)
        if minutes >= 60:
            h, m = divmod(minutes, 60)
            duration = f"{h} hr. {m} min." if m else f"{h} hr."
        else:
            duration = f"{minutes} min."

        # rating ~ N(7.5, 1.0) clipped to [1, 10], one decimal; counts log-normal
        rating = round(min(10.0, max(1.0, gauss(7.5, 1.0))), 1)
        w = watchers[i]
        rating_count = max(0, int(w * (0.15 + 0.45 * rand())))

        # cast
        ncast = randint(3, 12)
        main_n = min(ncast, randint(1, 4))
        cast = []
        for j, (aname, aimg, aurl) in enumerate(actor_s.distinct(ncast)):
            cast.append(
                {
                    "actor_name": aname,
                    "character_name": _person_name(rng, style)
                    if rand() > 0.03
                    else f"{_person_name(rng, style)} | {_person_name(rng, style)}",
                    "role_type": "Main Role"
                    if j < main_n
                    else choices(extra_roles, cum_weights=extra_roles_cw)[0],
                    "actor_image": aimg,
                    "profile_url": aurl,
                }
            )

        # alternative names: 0-10 (romanisation, English variants, foreign scripts)
        alt_names: list[str] = []
        n_alt = choices((0, 1, 2, 3, 5, 8, 10), cum_weights=(10, 25, 45, 65, 80, 93, 100))[0]
        for _ in range(n_alt):
            r = rand()
            if r < 0.35:
                alt_names.append(choice(_ALT_NAME_FOREIGN))
            elif r < 0.7:
                alt_names.append(_person_name(rng, style))
            else:
                alt_names.append(f"{adj_s.one()} {noun_s.one()}")
        alt_names = sorted(set(alt_names))

        # description: 200-600 characters
        target = randint(200, 600)
        name1 = _person_name(rng, style)
        name2 = _person_name(rng, style)
        fill = {
            "year": year,
            "name": name1,
            "name2": name2,
            "adj": choice(_DESC_ADJS),
            "adj2": choice(_DESC_ADJS),
            "job": choice(_DESC_JOBS),
            "job2": choice(_DESC_JOBS),
            "verb": choice(_DESC_VERBS),
            "verb2": choice(_DESC_VERBS2),
            "event": choice(_DESC_EVENTS),
            "obstacle": choice(_DESC_OBSTACLES),
            "place": choice(_TITLE_PLACES),
        }
        parts = [choice(_DESC_OPENERS).format(**fill)]
        length = len(parts[0])
        for sentence in rng.sample(_DESC_MIDDLES, len(_DESC_MIDDLES)):
            if length >= target:
                break
            sentence = sentence.format(**fill)
            parts.append(sentence)
            length += len(sentence) + 1
        description = " ".join(parts)
        if len(description) > 600:
            cut = description.rfind(" ", 0, 597)
            description = description[: cut if cut >= 200 else 597].rstrip(" ,.") + "..."

        # recommendations: 0-6 other records
        n_rec = choices((0, 2, 4, 6), cum_weights=(15, 30, 50, 100))[0] if count > 1 else 0
        recs = []
        for _ in range(n_rec):
            j = randint(0, count - 1)
            if j != i:
                recs.append(
                    {
                        "title": titles[j],
                        "url": urls[j],
                        "image_url": covers[j].replace("_4f.jpg", "_4t.jpg"),
                    }
                )

        pat = choices(aired_pats, cum_weights=aired_cw)[0]
        records.append(
            {
                "url": urls[i],
                "title": titles[i],
                "alternative_names": alt_names,
                "country": country,
                "type": dtype,
                "episodes": episodes,
                "aired_date": aired_date,
                "aired_on": ", ".join(_WEEKDAYS[d] for d in pat),
                "original_network": choice(NETWORKS[country]),
                "duration": duration,
                "content_rating": choices(cr_names, cum_weights=cr_cw)[0],
                "genres": genres,
                "tags": tags,
                "description": description,
                "cover_image": covers[i],
                "rating": rating,
                "rating_count": rating_count,
                "watchers": w,
                "popularity_rank": ranks[i],
                "cast": cast,
                "recommendations": recs,
            }
        )
    return records


def write_catalog(records: list[dict[str, Any]], out: Path) -> int:
    """Write ``records`` as a compact UTF-8 JSON array; returns the number of bytes."""
    data = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return len(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gen_catalog", description="Generate a synthetic drama catalog."
    )
    parser.add_argument("--count", type=int, required=True, help="number of records")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")
    t0 = time.perf_counter()
    records = generate(args.count, args.seed)
    t1 = time.perf_counter()
    size = write_catalog(records, args.out)
    t2 = time.perf_counter()
    print(
        f"gen_catalog: {args.count} records (seed {args.seed}) -> {args.out} "
        f"[{size / 1e6:.1f} MB; generate {t1 - t0:.1f}s, write {t2 - t1:.1f}s]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
