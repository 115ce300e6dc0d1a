"""CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image Captioning") on COCO-style data, Dagster-free.

The published implementation (`utils/chair.py` of github.com/LisaAnne/Hallucination) finds a caption's objects
like this, and so does `Chair.find`:

1. lower-case words, each singularized;
2. two-word names merged, left to right: COCO's double words ("hot dog", "stop sign"), "baby"/"adult" + animal
   -> the animal (not a person), "passenger jet"/"passenger train" -> the vehicle (not a person),
   "bow tie" -> tie, "toilet seat" -> toilet;
3. "seat" dropped from a caption that also names a toilet (a toilet's seat is not a chair);
4. every remaining word on a line of CHAIR's `synonyms.txt` names that line's first word, once per mention.

An image's ground truth is its annotated categories plus every object its human captions name (the same rules).
CHAIR_i = hallucinated mentions / mentions; CHAIR_s = captions with one / captions (`metrics.caption_scores`).

`variant="reference"` keeps the published implementation's quirks where they change counts, so numbers compare
with published CHAIR; `"corrected"` applies the same rules without them. docs/metrics.md lists each difference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal, get_args

from si_assets.evaluation.metrics import Mention

ChairVariant = Literal["reference", "corrected"]
CHAIR_VARIANTS: tuple[str, ...] = get_args(ChairVariant)

# --- the reference's hand-written rules ------------------------------------------------------------------------

# COCO names of two words, merged before the synonym look-up ("stove top oven" has three: the reference only ever
# merges pairs, so it never matches there).
DOUBLE_WORDS = (
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "home plate",
)
# "baby" and "adult" name a person; before one of these they describe the animal instead
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
# "passenger" names a person; before one of these it describes the vehicle instead
VEHICLE_WORDS = ("jet", "train")


def merged_names(variant: ChairVariant) -> dict[str, str]:
    """Multi-word name -> the word it stands for, as the reference builds it (later entries win)."""
    names = {name: name for name in DOUBLE_WORDS}
    names |= {f"{age} {animal}": animal for age in ("baby", "adult") for animal in ANIMAL_WORDS}
    names |= {f"passenger {vehicle}": vehicle for vehicle in VEHICLE_WORDS}
    names |= {"bow tie": "tie", "toilet seat": "toilet"}
    if variant == "reference":
        names["wine glas"] = "wine glass"  # its singularizer turns "glass" into "glas"
    return names


# --- words ------------------------------------------------------------------------------------------------------

# nltk.word_tokenize, as far as object names go: punctuation and clitics split off ("dog's" -> "dog", "'s");
# hyphenated and slashed compounds stay one word ("hot-dog", "cup/mug").
_TOKEN = re.compile(r"[^\W_]+(?:[-/][^\W_]+)*")


def tokens(text: str) -> list[str]:
    """The text's words as written (case kept)."""
    return _TOKEN.findall(text)


def words_of(text: str) -> list[str]:
    return tokens(text.lower())


# pattern.en's `singularize` (v2.6), which the reference applies to every word, reproduced with its quirks: a word
# that already is singular loses a final "s" ("bus" -> "bu", "glass" -> "glas", "tennis" -> "tenni"), "canoes" ->
# "cano", "ties" -> "ty", the plurals of its "-ie" words stay plural ("collies"), "thieves" -> "thieve".
_PATTERN_AS_IS = (  # a word that ends one of these is returned as it is ("scissors", and also "is", "a", "and")
    "bison debris headquarters pincers trout bream diabetes herpes pliers tuna breeches djinn high-jinks "
    "proceedings whiting britches eland homework rabies wildebeest carp elk innings salmon chassis flounder "
    "jackanapes scissors christmas gallows mackerel series clippers georgia measles shears cod graffiti mews "
    "species contretemps mumps swine corps news swiss advice equipment happiness luggage software bread fruit "
    "information mathematics progress understanding butter furniture ketchup mayonnaise research water cheese "
    "garbage knowledge meat rice electricity gravel love mustard sand"
).split()
_PATTERN_IE = (  # their plurals are returned unchanged
    "alergie cutie hoagie newbie softie veggie auntie doggie hottie nightie sortie weenie beanie eyrie indie "
    "oldie stoolie yuppie birdie freebie junkie sweetie zombie bogie goonie laddie pixie techie bombie groupie "
    "laramie quickie collie hankie lingerie reverie toughie cookie hippie meanie rookie valkyrie"
).split()
_PATTERN_IRREGULAR = {  # by word ending: "policemen" -> "policeman"
    "atlantes": "atlas",
    "atlases": "atlas",
    "axes": "axe",
    "beeves": "beef",
    "brethren": "brother",
    "children": "child",
    "corpora": "corpus",
    "corpuses": "corpus",
    "ephemerides": "ephemeris",
    "feet": "foot",
    "ganglia": "ganglion",
    "geese": "goose",
    "genera": "genus",
    "genii": "genie",
    "graffiti": "graffito",
    "helves": "helve",
    "kine": "cow",
    "leaves": "leaf",
    "loaves": "loaf",
    "men": "man",
    "mongooses": "mongoose",
    "monies": "money",
    "moves": "move",
    "mythoi": "mythos",
    "numena": "numen",
    "occipita": "occiput",
    "octopodes": "octopus",
    "opera": "opus",
    "opuses": "opus",
    "our": "my",
    "oxen": "ox",
    "penes": "penis",
    "penises": "penis",
    "people": "person",
    "sexes": "sex",
    "soliloquies": "soliloquy",
    "teeth": "tooth",
    "testes": "testis",
    "trilbys": "trilby",
    "turves": "turf",
    "zoa": "zoon",
}
_PATTERN_SUFFIXES = [  # (pattern, replacement): the first that matches decides
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"(.)ae$", r"\1a"),
        (r"(.)itis$", r"\1itis"),
        (r"(.)eaux$", r"\1eau"),
        (r"(quiz)zes$", r"\1"),
        (r"(matr)ices$", r"\1ix"),
        (r"(ap|vert|ind)ices$", r"\1ex"),
        (r"^(ox)en", r"\1"),
        (r"(alias|status)es$", r"\1"),
        (r"([octop|vir])i$", r"\1us"),  # a character class: any word ending in "ti", "pi", "ri", ...
        (r"(cris|ax|test)es$", r"\1is"),
        (r"(shoe)s$", r"\1"),
        (r"(o)es$", r"\1"),
        (r"(bus)es$", r"\1"),
        (r"([m|l])ice$", r"\1ouse"),
        (r"(x|ch|ss|sh)es$", r"\1"),
        (r"(m)ovies$", r"\1ovie"),
        (r"(.)ombies$", r"\1ombie"),
        (r"(s)eries$", r"\1eries"),
        (r"([^aeiouy]|qu)ies$", r"\1y"),
        (r"([aeo]l)ves$", r"\1f"),
        (r"([^d]ea)ves$", r"\1f"),
        (r"arves$", "arf"),
        (r"erves$", "erve"),
        (r"([nlw]i)ves$", r"\1fe"),
        (r"([lr])ves$", r"\1f"),
        (r"([aeo])ves$", r"\1ve"),
        (r"(sive)s$", r"\1"),
        (r"(tive)s$", r"\1"),
        (r"(hive)s$", r"\1"),
        (r"([^f])ves$", r"\1fe"),
        (r"(^analy)ses$", r"\1sis"),
        (r"((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis"),
        (r"(.)opses$", r"\1opsis"),
        (r"(.)yses$", r"\1ysis"),
        (r"(h|d|r|o|n|b|cl|p)oses$", r"\1ose"),
        (r"(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose"),
        (r"(.)oses$", r"\1osis"),
        (r"([ti])a$", r"\1um"),
        (r"(n)ews$", r"\1ews"),
        (r"s$", ""),
    )
]


@lru_cache(maxsize=1 << 16)
def reference_singular(word: str) -> str:
    """A lower-case word as pattern.en 2.6 singularizes it (what the reference computes)."""
    if any(listed.endswith(word) for listed in _PATTERN_AS_IS):
        return word
    if any(word.endswith(ie + "s") for ie in _PATTERN_IE):
        return word
    for plural, singular in _PATTERN_IRREGULAR.items():
        if word.endswith(plural):
            return word[: -len(plural)] + singular
    for pattern, replacement in _PATTERN_SUFFIXES:
        if pattern.search(word):
            return pattern.sub(replacement, word)
    return word


# The corrected singularizer: irregular plurals by table, invariant and already-singular words left alone.
_IRREGULAR = {
    "men": "man",
    "women": "woman",
    "children": "child",
    "people": "person",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "oxen": "ox",
    "calves": "calf",
    "halves": "half",
    "knives": "knife",
    "leaves": "leaf",
    "loaves": "loaf",
    "wolves": "wolf",
    "shelves": "shelf",
    "thieves": "thief",
    "wives": "wife",
    "lives": "life",
    "scarves": "scarf",
    "hooves": "hoof",
    "elves": "elf",
    "cacti": "cactus",
    "fungi": "fungus",
    "octopi": "octopus",
    "criteria": "criterion",
    "phenomena": "phenomenon",
}
# endings that keep their irregular plural inside compounds ("policemen", "grandchildren", "pocketknives")
_IRREGULAR_ENDINGS = ("men", "children", "people", "geese", "feet", "teeth", "knives", "wives")
_NOT_PLURAL = set(  # words the rules below would wrongly shorten
    "specimen abdomen acumen albumen amen bitumen cyclamen hymen lumen omen ramen regimen semen stamen "
    "sheep deer fish moose bison aircraft spacecraft cattle swine salmon trout species series scissors "
    "news means lens gas atlas canvas bias christmas rhinoceros chaos cosmos thermos asbestos kudos "
    "tennis iris pelvis penis trellis chassis debris metropolis axis praxis police".split()
)
_US_PLURALS = {"emus", "gnus", "menus", "tutus", "haikus", "tofus"}
_IE_SINGULARS = set(  # "-ies" plurals whose singular ends in "-ie", not "-y"
    "tie pie lie die magpie doggie collie cookie movie goalie hippie selfie zombie rookie genie calorie prairie "
    "brownie smoothie hoodie beanie birdie veggie budgie auntie sweetie cutie bootie lingerie eerie pixie "
    "freebie junkie hottie newbie oldie quickie techie toughie valkyrie".split()
)
_OE_SINGULARS = set("shoe canoe toe hoe oboe horseshoe snowshoe tiptoe floe sloe foe mistletoe".split())
_CHE_SINGULARS = set(
    "headache niche quiche avalanche cache cliche moustache mustache psyche creche douche microfiche".split()
)


@lru_cache(maxsize=1 << 16)
def singular(word: str) -> str:
    """A lower-case word in the singular ("buses" -> "bus", "bus" -> "bus", "canoes" -> "canoe")."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _NOT_PLURAL:
        return word
    for ending in _IRREGULAR_ENDINGS:
        if word.endswith(ending):
            return word[: -len(ending)] + _IRREGULAR[ending]
    if word.endswith(("buses", "busses")) and word not in ("abuses", "disabuses"):  # "minibuses"
        return word[: word.rindex("bus") + 3]
    if word.endswith("ies"):
        return word[:-1] if word[:-1] in _IE_SINGULARS or len(word) <= 4 else word[:-3] + "y"
    if word.endswith("oes"):
        return word[:-1] if word[:-1] in _OE_SINGULARS else word[:-2]
    if word.endswith(("xes", "shes", "sses", "zzes")):
        return word[:-2]
    if word.endswith("ches"):
        return word[:-1] if word[:-1] in _CHE_SINGULARS else word[:-2]
    if word.endswith(("ss", "us")) and word not in _US_PLURALS:
        return word
    if word.endswith("sis"):  # "oasis", "analysis"
        return word
    if word.endswith("s") and len(word) > 2:
        return word[:-1]
    return word


# --- synonyms ---------------------------------------------------------------------------------------------------


def parse_synonyms(text: str, variant: ChairVariant = "reference") -> list[list[str]]:
    """CHAIR's `synonyms.txt`: one object per line, its canonical name first. The reference splits each stripped
    line on ", " exactly, so a name after a double space keeps a leading space and a name with a capital never
    matches (captions are lower-cased); the corrected parse splits on commas, strips and lower-cases."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if variant == "reference":
            names = line.strip().split(", ")
        else:
            names = [name.strip().lower() for name in line.split(",") if name.strip()]
        lines.append(names)
    return lines


class Chair:
    """CHAIR's object finder over one synonym list (`lines`, each canonical name first), for one variant."""

    def __init__(
        self,
        lines: Sequence[Sequence[str]],
        variant: ChairVariant = "reference",
        objects: Sequence[str] | None = None,
    ) -> None:
        if variant not in CHAIR_VARIANTS:
            raise ValueError(f"CHAIR variant must be one of {CHAIR_VARIANTS}, not {variant!r}")
        self.variant: ChairVariant = variant
        self.canonical: dict[str, str] = {}
        for line in lines:
            for name in line:
                self.canonical[name] = line[0]  # a name on two lines belongs to the later one, as in the reference
        heads = list(dict.fromkeys(line[0] for line in lines))
        self.objects = list(objects) if objects is not None else heads
        missing = sorted(set(heads) - set(self.objects))
        if missing:
            raise ValueError(f"objects {missing[:5]} have synonym lines but are not among the objects")
        self._names = merged_names(variant)
        if variant == "corrected":  # every multi-word synonym is a name too; the hand-written rules still decide
            self._names = {name: name for name in self.canonical if " " in name} | self._names
        # the reference merges pairs only
        self._longest = 2 if variant == "reference" else max(len(name.split()) for name in self._names)
        self._singular = reference_singular if variant == "reference" else singular

    def words(self, text: str) -> list[str]:
        """The caption's words after singularizing, merging multi-word names and dropping a toilet's seat."""
        words: list[str] = []
        for token in words_of(text):
            parts = [self._singular(p) for p in token.split("-")] if self.variant == "corrected" else []
            if len(parts) > 1 and " ".join(parts) in self._names:
                words += parts  # "hot-dog" is "hot dog"; "man-made" stays one word
            else:
                words.append(self._singular(token))
        merged = []
        i = 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 1, -1):
                name = self._names.get(" ".join(words[i : i + n]))
                if name is not None:
                    merged.append(name)
                    i += n
                    break
            else:
                merged.append(words[i])
                i += 1
        if "toilet" in merged and "seat" in merged:
            merged = [w for w in merged if w != "seat"]
        return merged

    def find(self, text: str) -> list[Mention]:
        """Every mention of an object, in order; the same object named twice counts twice."""
        return [Mention(w, self.canonical[w]) for w in self.words(text) if w in self.canonical]

    def ground_truth(self, categories: Iterable[str], human_captions: Iterable[str] = ()) -> set[str]:
        """An image's objects: its annotated categories (through the synonym list, as the reference maps them)
        and every object its human captions name."""
        truth = {self.canonical.get(c, c) for c in categories}
        for caption in human_captions:
            truth.update(m.object for m in self.find(caption))
        return truth
