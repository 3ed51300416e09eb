"""The closed vocabulary: digits, the NATO alphabet and common English words, one token each.

Each word is one SentencePiece-style piece ("▁seven"), so parakeet-mlx's own detokenizer
(replace "▁" by a space, join) turns token ids back into words. Homophones (two/to/too,
four/for, eight/ate, ...) are left out: no acoustic model could tell them apart.
"""

from __future__ import annotations

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

NATO = (  # noqa: SIM905 (a block of words reads better than a list of strings)
    "alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()

COMMON = """
the a and of in is it that was he with as his on at they be this have from or had not but what
all were we when your can said there use an each which she do how if will up other about out
many then them these so some her would make like him into time has look more go see number way
could people my than first water been call who oil now find long down day did get come made may
part over new sound take only little work place year live me back give most very after thing
just name good sentence man think say great where help through much before line turn cause same
mean differ move right boy old tell does set three want air well also play small end put home
read hand port large spell add even land must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant
cover food sun between state keep eye never last let thought city tree cross farm hard start
might story saw far draw left late run while press close night real life few north open seem
together next white children begin got walk example ease paper group always music those both
mark often letter until mile river car feet care second book carry took science eat room friend
began idea fish mountain stop once base horse cut sure watch color face wood main enough plain
girl usual young ready above ever red list though feel talk bird soon body dog family direct
leave song measure door product black short numeral class wind question happen complete ship
area half rock order fire south problem piece told knew pass since top whole king space heard
best better true during hundred am remember step early hold west ground interest reach fast
five sing listen table travel less morning simple several toward war lay against pattern slow
center love person money serve appear road map rain rule pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box field rest correct
able pound done beauty drive stood contain front teach week final gave green quick develop
ocean warm free minute strong special mind behind clear tail produce fact street inch nothing
course stay wheel full force blue object decide surface deep moon island foot system busy test
record boat common gold possible plane dry wonder laugh thousand ran check game shape yes hot
miss brought heat snow tire bring distant fill east paint language among
""".split()  # noqa: SIM905

# Homophones of words kept above (or of each other) and words espeak reads ambiguously.
_EXCLUDED = {
    "to",
    "too",
    "for",
    "won",
    "ate",
    "by",
    "buy",
    "know",
    "knew",
    "write",
    "their",
    "sea",
    "our",
    "hour",
    "read",
    "wood",
    "plane",
} - set(DIGITS)


def words() -> list[str]:
    """The vocabulary's words, each once, in a fixed order (digits, NATO, common words)."""
    seen: set[str] = set()
    out: list[str] = []
    for word in DIGITS + NATO + COMMON:
        if word in seen or word in _EXCLUDED:
            continue
        seen.add(word)
        out.append(word)
    return out


def pieces(tokens: str = "words") -> list[str]:
    """The model's vocabulary as parakeet-mlx stores it in config.json (blank not included).

    "words": one piece per word. "letters": a word-initial ("▁s") and an inner ("s") piece per
    letter; many more examples per class, so CTC learns in far fewer steps.
    """
    if tokens == "words":
        return ["▁" + word for word in words()]
    letters = sorted({c for word in words() for c in word})
    return ["▁" + c for c in letters] + letters


def encode(text: str, vocabulary: list[str]) -> list[int]:
    """Token ids of `text` in `vocabulary` (either kind of `pieces()`)."""
    index = {piece: i for i, piece in enumerate(vocabulary)}
    out: list[int] = []
    for word in text.split():
        if "▁" + word in index:
            out.append(index["▁" + word])
        else:
            out += [index["▁" + word[0]]] + [index[c] for c in word[1:]]
    return out


# What espeak-ng is given for a word whose written form it would not say as meant.
SPOKEN = {"xray": "x-ray", "alfa": "alpha", "juliett": "juliet"}


def spoken(text: str) -> str:
    return " ".join(SPOKEN.get(word, word) for word in text.split())
