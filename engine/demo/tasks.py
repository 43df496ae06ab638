"""The demo model's training and evaluation data: conversations, and the reply the model should give.

Every example is a conversation in the engine's message format (the last turn a user request, or a
tool result after the model's call), the function tools declared with it, a reasoning effort and the
reply as harmony messages. `Example.expected` says what a correct reply contains, for evaluation.

The arithmetic working is written so that every step is a lookup a small transformer can learn:
numbers the model computes are written digit by digit (the trainer gives each digit its own token),
columns go from the right with the carry or borrow named, and the result is read back in order.
Low effort writes one line and no working; medium and high the same column lines.

Names, places, currencies and queries are drawn from word and syllable pools, so fresh instances
(`Generator(seed)` with a new seed) carry new names made of pieces the model has seen.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field

from engine.demo.skills import ABOUT_TEXT

EFFORTS = ("low", "medium", "high")
SKILLS = ("add", "subtract", "multiply", "tool_call", "tool_answer", "no_tool", "about")


@dataclass(frozen=True)
class Reply:
    """One assistant message: channel "analysis", "final", or "call" (commentary to functions.`name`,
    `<|constrain|>json`, text the arguments).

    A name or value copied from the prompt into a call is written in the tokens the prompt has it in,
    the first one without its leading space: the prompt's " Oslo" becomes "Oslo", "plants library"
    "plants" + " library". Each token written is then the copy of one prompt token, found by where
    the last one was, as an induction head finds it. (JSON's own tokens, "Os" + "lo", would make each
    copy a spelling lesson; written a character per token, the model must count characters inside
    tokens: after 1000 steps of tool calls alone, 0 of 16 calls were right that way against 11 of
    16 this way.) Numbers the model computes are written a digit per token, but a number it copies
    from the prompt (the operands, an amount) keeps the prompt's tokens: a copy of one token is
    easier than reading a token's digits out in order."""

    channel: str
    text: str
    name: str | None = None
    words: tuple[str, ...] = ()  # names and values copied into a call, written in the prompt's tokens
    copied: tuple[str, ...] = ()  # numbers copied from the prompt, written in the prompt's tokens


@dataclass
class Example:
    skill: str  # one of SKILLS
    messages: list[dict]
    tools: list[dict]
    effort: str
    reply: list[Reply]
    expected: dict = field(default_factory=dict)
    current_date: str | None = None


CITIES = """Oslo Lima Paris London Tokyo Berlin Madrid Rome Vienna Prague Warsaw Lisbon Dublin Athens Cairo
Nairobi Lagos Accra Dakar Tunis Algiers Casablanca Johannesburg Cape Town Durban Moscow Kyiv Minsk Riga Vilnius
Tallinn Helsinki Stockholm Copenhagen Reykjavik Amsterdam Brussels Luxembourg Zurich Geneva Bern Milan Naples
Venice Florence Munich Hamburg Frankfurt Cologne Stuttgart Lyon Marseille Nice Toulouse Bordeaux Porto Seville
Valencia Barcelona Bilbao Istanbul Ankara Tehran Baghdad Riyadh Dubai Doha Muscat Karachi Lahore Delhi Mumbai
Chennai Kolkata Bangalore Dhaka Kathmandu Colombo Bangkok Hanoi Manila Jakarta Singapore Kuala Lumpur Seoul
Busan Beijing Shanghai Shenzhen Hong Kong Taipei Osaka Kyoto Sapporo Sydney Melbourne Perth Brisbane Auckland
Wellington Toronto Montreal Vancouver Ottawa Calgary Chicago Boston Seattle Denver Austin Dallas Houston Miami
Atlanta Phoenix Portland Detroit New York Los Angeles San Francisco Mexico City Guadalajara Havana Bogota Quito
Caracas Santiago Buenos Aires Montevideo Asuncion La Paz Brasilia Recife Salvador Manaus Anchorage Honolulu
Edinburgh Glasgow Cardiff Belfast Manchester Liverpool Leeds Bristol Krakow Gdansk Budapest Bucharest Sofia
Belgrade Zagreb Ljubljana Sarajevo Skopje Tirana Tbilisi Yerevan Baku Tashkent Almaty Ulaanbaatar Kabul""".split()
# Two-word cities are split above; the list is used for its pieces too. Whole names:
PLACES = [*sorted(set(CITIES) - {"Cape", "Town", "Kuala", "Lumpur", "Hong", "Kong", "New", "York", "Los", "Angeles",
                                 "San", "Francisco", "Mexico", "City", "Buenos", "Aires", "La", "Paz"}),
          "Cape Town", "Kuala Lumpur", "Hong Kong", "New York", "Los Angeles", "San Francisco", "Mexico City",
          "Buenos Aires", "La Paz"]
SYLLABLES = ("ka ro mi sa ten vel bra dor lin ma ri to ber an el os ul gar fen nor qua zi pe lo ham sto vik "
             "mar kel dun por tas ven ira usk alm").split()
CODE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # made-up currency codes are drawn from these
CURRENCIES = ("USD EUR GBP JPY CHF CAD AUD NZD CNY HKD SGD SEK NOK DKK PLN CZK HUF RON BGN TRY INR PKR "
              "BRL ARS CLP COP PEN MXN ZAR EGP NGN KES MAD AED SAR QAR ILS KRW THB VND IDR MYR PHP").split()
WORDS = ("river mountain tallest tree oldest bridge largest lake history of tea recipe bread fastest animal "
         "deepest ocean longest road first computer moon landing population speed of light best coffee "
         "capital city ancient library smallest bird coldest place highest waterfall famous painting "
         "electric car solar panel price train schedule museum opening hours football score music festival "
         "healthy breakfast rain forest desert plants volcano eruption chess rules piano lessons garden "
         "flowers ocean tides star map winter olympics hiking trail city park").split()
NAME_WORDS = ("get fetch lookup find current local now check query search run web net info data tool "
              "service api live read show").split()
KIND_WORDS = {"weather": ["weather", "forecast", "conditions"], "time": ["time", "clock", "zone"],
              "currency": ["currency", "fx", "money", "rates"], "search": ["search", "web", "results"]}
DISTRACTORS = [
    ("send_email", "Send an email to a recipient.", {"to": "string", "subject": "string", "body": "string"}),
    ("create_reminder", "Create a reminder with a text and a due time.", {"text": "string", "due": "string"}),
    ("get_stock_price", "Get the latest price of a stock by its ticker symbol.", {"symbol": "string"}),
    ("translate_text", "Translate a text into another language.", {"text": "string", "language": "string"}),
    ("play_music", "Play a song or an artist on the speaker.", {"song": "string"}),
    ("set_timer", "Start a countdown timer.", {"minutes": "number"}),
    ("read_file", "Read a file from the workspace.", {"path": "string"}),
    ("book_table", "Book a table at a restaurant.", {"restaurant": "string", "people": "integer"}),
]

# Each kind of tool: description phrasings, parameter-name pools and the request phrasings.
TOOL_KINDS = {
    "weather": {
        "descriptions": ["Get the current weather in a location.", "Returns the weather forecast for a city.",
                         "Look up current weather conditions for a place.", "Current weather for a given city.",
                         "Fetches temperature and conditions at a location."],
        "names": ["get_weather", "weather", "current_weather", "lookup_weather", "fetch_forecast", "weather_now"],
        "params": {"place": ["location", "city", "place", "where", "loc", "town"]},
        "requests": ["What's the weather in {place}?", "What is the weather in {place}?",
                     "How is the weather in {place} today?", "Weather in {place}?", "Is it raining in {place}?",
                     "Tell me the weather for {place}.", "What's the forecast for {place}?",
                     "Check the weather in {place}", "how's the weather in {place}"],
        "lead": "The weather in {place}: {result}",
    },
    "time": {
        "descriptions": ["Get the current local time in a place.", "Returns the time in a city.",
                         "Look up the local time for a location.", "Current date and time at a given place.",
                         "Tells the local clock time in a city."],
        "names": ["get_time", "local_time", "current_time", "time_in", "world_clock", "lookup_time"],
        "params": {"place": ["location", "city", "place", "timezone", "where", "zone"]},
        "requests": ["What time is it in {place}?", "What's the time in {place}?", "Current time in {place}?",
                     "What's the local time in {place}?", "Tell me the time in {place}.", "time in {place}",
                     "What is the time now in {place}?"],
        "lead": "The local time in {place}: {result}",
    },
    "currency": {
        "descriptions": ["Convert an amount between currencies.", "Converts money from one currency to another.",
                         "Currency conversion at today's exchange rate.", "Exchange an amount into another currency.",
                         "Returns the converted amount for a currency pair."],
        "names": ["convert_currency", "currency_convert", "exchange", "fx_convert", "convert_money", "forex"],
        "params": {"amount": ["amount", "value", "quantity", "sum"],
                   "source": ["from", "source", "from_currency", "base", "currency_from"],
                   "target": ["to", "target", "to_currency", "quote", "currency_to"]},
        "requests": ["Convert {amount} {source} to {target}.", "How much is {amount} {source} in {target}?",
                     "{amount} {source} to {target}?", "Convert {amount} {source} into {target}",
                     "What is {amount} {source} in {target}?", "Exchange {amount} {source} to {target}."],
        "lead": "{amount} {source} in {target}: {result}",
    },
    "search": {
        "descriptions": ["Search the web.", "Run a web search and return the top results.",
                         "Searches the internet for a query.", "Look something up on the web.",
                         "Web search engine lookup."],
        "names": ["web_search", "search", "search_web", "google", "lookup", "find_online"],
        "params": {"query": ["query", "q", "search_terms", "text", "terms"]},
        "requests": ["Search the web for {query}", "Search the web for {query}.", "Look up {query} online",
                     "Find information about {query}", "Search for {query}", "Can you search the web for {query}?",
                     "Google {query}"],
        "lead": "Search results for {query}: {result}",
    },
}

KIND_SUBJECTS = {"weather": "the weather", "time": "the local time", "currency": "currency conversion",
                 "search": "web search"}

ARITHMETIC_REQUESTS = {
    "+": ["What is {a} + {b}?", "Compute {a}+{b}", "Compute {a} + {b}", "{a} plus {b}", "What's {a} + {b}?",
          "what is {a}+{b}", "Calculate {a} + {b}.", "{a} + {b} = ?", "What is {a} plus {b}?"],
    "-": ["What is {a} - {b}?", "Compute {a}-{b}", "Compute {a} - {b}", "{a} minus {b}", "What's {a} - {b}?",
          "what is {a}-{b}", "Calculate {a} - {b}.", "{a} - {b} = ?", "What is {a} minus {b}?"],
    "*": ["What is {a} * {b}?", "Compute {a}*{b}", "Compute {a} * {b}", "{a} times {b}", "What's {a} * {b}?",
          "what is {a}*{b}", "Calculate {a} * {b}.", "{a} * {b} = ?", "What is {a} times {b}?"],
}
ABOUT_REQUESTS = ["Who are you?", "What can you do?", "help", "Help", "What are you?", "Hi", "Hello!",
                  "who are you", "What is this?", "What model are you?", "Tell me about yourself."]
OFF_SKILL = ["Write a poem about {w1}.", "Tell me a joke about {w1}.", "Why is the {w1} {w2}?",
             "Explain {w1} {w2} to a child.", "What do you think about {w1}?", "Translate {w1} into French.",
             "Summarize the history of {w1} {w2}.", "Give me a recipe with {w1}.", "{w1} {w2}",
             "Can you write code that sorts a list?", "What is the meaning of life?", "Plan a trip to {place}.",
             "Who won the {w1} {w2} in 1998?", "Is {w1} better than {w2}?"]
INSTRUCTIONS = ["You are a helpful assistant.", "Answer briefly.", "Be concise and accurate.",
                "You are an assistant inside a chat app.", "Use the tools when they help."]


def made_up_names() -> list[str]:
    """Every made-up piece a fresh instance can put in a prompt or a reply: currency codes (any two or
    three capital letters), words of one to three syllables (places capitalized, parameter and tool
    names lowercase, and the short ones "_"-joined as a tool name's later parts). Their tokens are in
    the model's vocabulary whether or not the examples it learns from happen to draw them: a token
    without a row reads as unseen and can never be written, so a call that copies it would be wrong
    every time."""
    codes = ["".join(p) for n in (2, 3) for p in itertools.product(CODE_LETTERS, repeat=n)]
    words = ["".join(p) for n in (1, 2, 3) for p in itertools.product(SYLLABLES, repeat=n)]
    return [*codes, *words, *(w.capitalize() for w in words), *("_" + w for w in words if len(w) <= 6)]


def digits_of(n: int) -> list[int]:
    """Decimal digits, least significant first (0 -> [0])."""
    return [int(c) for c in reversed(str(n))]


PLACES_OF_DIGITS = ("units", "tens", "hundreds", "thousands")


def column_addition(a: int, b: int) -> list[str]:
    """a + b column by column from the right, a line per column: 'tens: 4+9+1=14, write 4 carry 1'."""
    da, db = digits_of(a), digits_of(b)
    width = max(len(da), len(db))
    da, db = da + [0] * (width - len(da)), db + [0] * (width - len(db))
    lines, carry = [], 0
    for i in range(width):
        total = da[i] + db[i] + carry
        new_carry = total // 10
        lines.append(f"{PLACES_OF_DIGITS[i]}: {da[i]}+{db[i]}" + (f"+{carry}" if carry else "") +
                     f"={total}, write {total % 10}" + (f" carry {new_carry}" if new_carry else ""))
        carry = new_carry
    if carry:
        lines.append(f"{PLACES_OF_DIGITS[width]}: write {carry}")
    return lines


def column_subtraction(a: int, b: int) -> list[str]:
    """a - b (a >= b) column by column from the right, borrowing ten where the top digit is too small:
    'units: 14-8=6, write 6 borrow 1', then 'tens: 7-2-1=4, write 4'."""
    da, db = digits_of(a), digits_of(b)
    db += [0] * (len(da) - len(db))
    lines, borrow = [], 0
    for i in range(len(da)):
        new_borrow = 1 if da[i] - borrow - db[i] < 0 else 0
        top = da[i] + 10 * new_borrow
        result = top - borrow - db[i]
        lines.append(f"{PLACES_OF_DIGITS[i]}: {top}-{db[i]}" + (f"-{borrow}" if borrow else "") +
                     f"={result}, write {result}" + (" borrow 1" if new_borrow else ""))
        borrow = new_borrow
    return lines


def comparison(a: int, b: int) -> str:
    """Which of a and b is larger, read digit by digit from the left, so that the choice of what to
    subtract from what is made one digit pair at a time: 'Compare 748 and 719: hundreds 7=7, tens
    4>1, so 748 is larger.'"""
    head = f"Compare {a} and {b}: "
    if len(str(a)) != len(str(b)):
        return head + f"{a} has {'more' if a > b else 'fewer'} digits, so {max(a, b)} is larger"
    pairs = []
    for place, x, y in zip(reversed(PLACES_OF_DIGITS[:len(str(a))]), str(a), str(b)):
        pairs.append(f"{place} {x}{'=' if x == y else '>' if x > y else '<'}{y}")
        if x != y:
            return head + ", ".join(pairs) + f", so {max(a, b)} is larger"
    return head + ", ".join(pairs) + ", so they are equal"


def column_product(a: int, digit: int) -> tuple[list[str], int]:
    """a × one digit from the right ('6*9=54, write 4 carry 5', then '4*9=36, +5=41, write 41'); returns
    the lines and the product. The carry is added after the product is written: one table fact,
    then one small sum, each a step a small model gets right."""
    lines, carry = [], 0
    da = digits_of(a)
    for i, d in enumerate(da):
        total = d * digit + carry
        terms = f"{d}*{digit}={d * digit}" + (f", +{carry}={total}" if carry else "")
        if i == len(da) - 1:
            lines.append(f"{terms}, write {total}")
        else:
            lines.append(f"{terms}, write {total % 10}" + (f" carry {total // 10}" if total >= 10 else ""))
        carry = total // 10
    return lines, a * digit


def arithmetic_working(a: int, op: str, b: int, effort: str) -> tuple[str, int]:
    """The reasoning for `a op b` at an effort, and the result.

    Low effort is one line with the result. Medium and high write the same column lines (high with a
    sentence that says how): a line per column with its digits, their sum or difference, the digit
    written and the carry or borrow. The digits of a line sit next to each other ('4+9+1=14'), so the
    sum is computed from tokens one to five places back."""
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    if effort == "low":
        return f"{a} {op} {b} = {result}.", result
    lines = ["By columns:" if effort == "medium" else
             {"+": "Column by column from the right, carrying tens:",
              "-": "Column by column from the right, borrowing tens:",
              "*": "Multiply by each digit of the second number, then add:"}[op]]
    if op == "+":
        lines += column_addition(a, b)
    elif op == "-":
        top, bottom = (a, b) if a >= b else (b, a)
        compared = comparison(a, b)
        lines.append(compared + (f": compute {b} - {a} and make it negative." if a < b else "."))
        lines += column_subtraction(top, bottom)
    else:
        partials = []
        for i, digit in enumerate(digits_of(b)):
            lines.append(f"{a}*{digit}:")
            steps, product = column_product(a, digit)
            lines += steps
            shifted = product * 10 ** i
            lines.append(f"so {a}*{digit * 10 ** i}={shifted}")
            partials.append(shifted)
        if len(partials) == 2:
            lines.append(f"{partials[0]}+{partials[1]}:")
            lines += column_addition(partials[0], partials[1])
    lines.append(f"So {a} {op} {b} = {result}.")
    return "\n".join(lines), result


def copied_expressions(a: int, op: str, b: int) -> tuple[str, ...]:
    """The places where the working and the answer restate the operands (`Reply.copied`)."""
    if op == "-":
        return f"{a} - {b}", f"{a} and {b}", f"{max(a, b)} is larger", f"{b} - {a}", f"{a} has"
    if op == "*":
        return (f"{a} * {b}", *{f"{a}*{d * 10 ** i}" for i, d in enumerate(digits_of(b))})
    return (f"{a} {op} {b}",)


class Generator:
    """Examples of every skill, reproducible from a seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    # --- pieces -------------------------------------------------------------------------------------
    def effort(self) -> str:
        return self.rng.choice(EFFORTS)

    def date(self) -> str | None:
        if self.rng.random() < 0.8:
            return None
        return f"20{self.rng.randint(24, 30)}-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}"

    def made_up_word(self, parts: int | None = None) -> str:
        return "".join(self.rng.choice(SYLLABLES) for _ in range(parts or self.rng.randint(2, 3)))

    def place(self) -> str:
        if self.rng.random() < 0.7:
            return self.rng.choice(PLACES)
        return self.made_up_word().capitalize()

    def currency(self) -> str:
        if self.rng.random() < 0.8:
            return self.rng.choice(CURRENCIES)
        return "".join(self.rng.choice(CODE_LETTERS) for _ in range(3))

    def amount(self) -> int | float:
        if self.rng.random() < 0.8:
            return self.rng.choice([self.rng.randint(1, 999), self.rng.randint(1, 9999), self.rng.randint(1, 100)])
        return round(self.rng.uniform(1, 999), self.rng.choice([1, 2]))

    def query(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 4)))

    def tool_name(self, kind: str) -> str:
        roll = self.rng.random()
        if roll < 0.4:
            return self.rng.choice(TOOL_KINDS[kind]["names"])
        if roll < 0.8:
            return f"{self.rng.choice(NAME_WORDS)}_{self.rng.choice(KIND_WORDS[kind])}"
        return "_".join(self.made_up_word(2) for _ in range(self.rng.randint(1, 2)))

    def param_name(self, choices: list[str]) -> str:
        return self.rng.choice(choices) if self.rng.random() < 0.8 else self.made_up_word(2)

    # --- tools --------------------------------------------------------------------------------------
    def tool(self, kind: str, taken: set[str]) -> tuple[dict, dict[str, str]]:
        """An OpenAI-style function tool of `kind` and the parameter name of each role."""
        spec = TOOL_KINDS[kind]
        name = self.tool_name(kind)
        while name in taken:
            name = self.tool_name(kind) + "_" + self.made_up_word(1)
        roles: dict[str, str] = {}
        for role, choices in spec["params"].items():
            chosen = self.param_name(choices)
            while chosen in roles.values():
                chosen = self.made_up_word(2)
            roles[role] = chosen
        properties = {}
        for role, pname in roles.items():
            kind_of = "number" if role == "amount" else "string"
            properties[pname] = {"type": kind_of}
            if self.rng.random() < 0.5:
                properties[pname]["description"] = {"place": "City name", "amount": "Amount to convert",
                                                    "source": "Currency code to convert from",
                                                    "target": "Currency code to convert to",
                                                    "query": "What to search for"}[role]
        tool = {"type": "function", "function": {
            "name": name, "description": self.rng.choice(spec["descriptions"]),
            "parameters": {"type": "object", "properties": properties, "required": list(properties)}}}
        return tool, roles

    def distractor(self, taken: set[str]) -> dict:
        name, description, params = self.rng.choice(DISTRACTORS)
        if name in taken or self.rng.random() < 0.3:
            name = f"{self.rng.choice(NAME_WORDS)}_{self.made_up_word(2)}"
        return {"type": "function", "function": {
            "name": name, "description": description,
            "parameters": {"type": "object", "properties": {p: {"type": t} for p, t in params.items()},
                           "required": list(params)}}}

    def toolset(self, include: str | None, exclude: str | None = None) -> tuple[list[dict], dict[str, str] | None, str | None]:
        """1-4 tools in random order: one of kind `include` (when given), other kinds except `exclude`,
        distractors. Returns the tools, the included tool's roles and its name."""
        tools, taken, roles, name = [], set(), None, None
        if include:
            tool, roles = self.tool(include, taken)
            name = tool["function"]["name"]
            tools.append(tool)
            taken.add(name)
        others = [k for k in TOOL_KINDS if k not in (include, exclude)]
        for _ in range(self.rng.choice([0, 0, 1, 1, 2, 3]) + (0 if include else 1)):
            if others and self.rng.random() < 0.5:
                tool, _ = self.tool(self.rng.choice(others), taken)
            else:
                tool = self.distractor(taken)
            if tool["function"]["name"] in taken:
                continue
            taken.add(tool["function"]["name"])
            tools.append(tool)
        self.rng.shuffle(tools)
        return tools, roles, name

    # --- conversations ------------------------------------------------------------------------------
    def history(self) -> list[dict]:
        """0-3 earlier finished turns of any kind (their reasoning is dropped when rendered)."""
        turns: list[dict] = []
        # Most examples have none: the prompt carries no loss, and training time is what bounds quality.
        for _ in range(self.rng.choice([0] * 15 + [1] * 4 + [2])):
            roll = self.rng.random()
            if roll < 0.45:
                a, op, b = self.operands()
                result = {"+": a + b, "-": a - b, "*": a * b}[op]
                turns += [{"role": "user", "content": self.rng.choice(ARITHMETIC_REQUESTS[op]).format(a=a, b=b)},
                          {"role": "assistant", "content": f"{a} {op} {b} = {result}."}]
            elif roll < 0.6:
                turns += [{"role": "user", "content": self.rng.choice(ABOUT_REQUESTS)},
                          {"role": "assistant", "content": ABOUT_TEXT}]
            else:
                w1, w2 = self.rng.choice(WORDS), self.rng.choice(WORDS)
                turns += [{"role": "user", "content": f"Tell me about {w1} {w2}."},
                          {"role": "assistant", "content": f"Here is something about {w1} {w2}."}]
        return turns

    def instructions(self) -> list[dict]:
        if self.rng.random() < 0.1:
            return [{"role": "developer" if self.rng.random() < 0.5 else "system",
                     "content": self.rng.choice(INSTRUCTIONS)}]
        return []

    def operands(self) -> tuple[int, str, int]:
        op = self.rng.choice("+-*")
        top = 99 if op == "*" else 999
        # Small numbers as often as large ones: every digit count is learnt.
        def number() -> int:
            return self.rng.randint(0, 10 ** self.rng.randint(1, len(str(top))) - 1)
        return number(), op, number()

    def arithmetic(self, effort: str | None = None, op: str | None = None, with_tools: bool = True) -> Example:
        effort = effort or self.effort()
        a, drawn_op, b = self.operands()
        op = op or drawn_op
        if op != drawn_op:  # redraw within the range of the asked operation
            top = 99 if op == "*" else 999
            a, b = self.rng.randint(0, top), self.rng.randint(0, top)
        request = self.rng.choice(ARITHMETIC_REQUESTS[op]).format(a=a, b=b)
        working, result = arithmetic_working(a, op, b, effort)
        tools = self.toolset(None)[0] if with_tools and self.rng.random() < 0.1 else []
        skill = {"+": "add", "-": "subtract", "*": "multiply"}[op]
        copied = copied_expressions(a, op, b)
        return Example(skill, [*self.instructions(), *self.history(), {"role": "user", "content": request}], tools,
                       effort, [Reply("analysis", working, copied=copied),
                                Reply("final", f"{a} {op} {b} = {result}.", copied=copied)],
                       {"answer": result, "a": a, "b": b, "op": op}, self.date())

    def request_values(self, kind: str) -> dict[str, object]:
        if kind in ("weather", "time"):
            return {"place": self.place()}
        if kind == "currency":
            source = self.currency()
            target = self.currency()
            while target == source:
                target = self.currency()
            return {"amount": self.amount(), "source": source, "target": target}
        return {"query": self.query()}

    def tool_call(self, effort: str | None = None, kind: str | None = None) -> Example:
        effort = effort or self.effort()
        kind = kind or self.rng.choice(list(TOOL_KINDS))
        tools, roles, name = self.toolset(kind)
        values = self.request_values(kind)
        request = self.rng.choice(TOOL_KINDS[kind]["requests"]).format(**values)
        arguments = {roles[role]: value for role, value in values.items()}
        reasoning = self.call_reasoning(kind, effort)
        numbers = tuple(str(v) for v in values.values() if not isinstance(v, str))
        return Example("tool_call", [*self.instructions(), *self.history(), {"role": "user", "content": request}],
                       tools, effort, [Reply("analysis", reasoning, copied=numbers),
                                       Reply("call", json_text(arguments), name, copied=numbers,
                                             words=tuple(v for v in values.values() if isinstance(v, str)))],
                       {"tool": name, "arguments": arguments, "kind": kind, "values": values}, self.date())

    def call_reasoning(self, kind: str, effort: str) -> str:
        """Says what is asked and that a tool covers it, naming neither the tool nor the values: a
        fresh name may be made of tokens the model never writes, and the call copies them anyway."""
        what = KIND_SUBJECTS[kind]
        if effort == "low":
            return f"Wants {what}; a tool covers it."
        if effort == "medium":
            return f"The user wants {what}. A declared tool covers it."
        return (f"The user asks for {what}. One of the declared tools covers this, so I call it with the values "
                f"from the request.")

    def tool_answer(self, effort: str | None = None) -> Example:
        """The turn after the call: the tool's result is in, the final answer states it."""
        call = self.tool_call(effort)
        kind, values = call.expected["kind"], call.expected["values"]
        result = self.tool_result(kind, values)
        messages = [*call.messages,
                    {"role": "assistant", "reasoning": call.reply[0].text,
                     "tool_calls": [{"id": "call_1", "type": "function",
                                     "function": {"name": call.expected["tool"], "arguments": call.reply[1].text}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": result}]
        answer = TOOL_KINDS[kind]["lead"].format(result=result, **values)
        note = {"low": "Answer with the result.", "medium": "The tool returned the result; I state it.",
                "high": "The tool returned its result, so I give it to the user."}[call.effort]
        copied = (result, *(str(v) for v in values.values() if not isinstance(v, str)))  # in the prompt's tokens
        return Example("tool_answer", messages, call.tools, call.effort,
                       [Reply("analysis", note), Reply("final", answer, copied=copied)],
                       {"result": result}, call.current_date)

    def tool_result(self, kind: str, values: dict) -> str:
        if kind == "weather":
            conditions = self.rng.choice(["sunny", "cloudy", "light rain", "snow", "windy", "fog", "clear sky"])
            temperature = self.rng.randint(-20, 40)
            return (f"{temperature} °C, {conditions}" if self.rng.random() < 0.5 else
                    json_text({"temperature_c": temperature, "conditions": conditions}))
        if kind == "time":
            return f"{self.rng.randint(0, 23):02d}:{self.rng.randint(0, 59):02d}"
        if kind == "currency":
            converted = round(float(values["amount"]) * self.rng.uniform(0.01, 150), 2)
            return f"{converted} {values['target']}"
        return "; ".join(f"{self.made_up_word(2).capitalize()} {self.rng.choice(WORDS)}"
                         for _ in range(self.rng.randint(1, 3)))

    def no_tool(self, effort: str | None = None) -> Example:
        """A request for a tool kind that no declared tool covers: said so, nothing called."""
        effort = effort or self.effort()
        kind = self.rng.choice(list(TOOL_KINDS))
        tools, _, _ = self.toolset(None, exclude=kind)
        values = self.request_values(kind)
        request = self.rng.choice(TOOL_KINDS[kind]["requests"]).format(**values)
        what = KIND_SUBJECTS[kind]
        # Worded as the call's reasoning up to where they part: the kind is named before the decision.
        reasoning = {"low": f"Wants {what}; no tool covers it.",
                     "medium": f"The user wants {what}. No declared tool covers it.",
                     "high": f"The user asks for {what}. None of the declared tools covers this, so I say so."}[effort]
        answer = f"None of the available tools covers {what}, so I cannot do that here."
        return Example("no_tool", [*self.instructions(), *self.history(), {"role": "user", "content": request}],
                       tools, effort, [Reply("analysis", reasoning), Reply("final", answer)], {"no_tool": True},
                       self.date())

    def about(self, effort: str | None = None, off_skill: bool | None = None) -> Example:
        effort = effort or self.effort()
        off_skill = self.rng.random() < 0.6 if off_skill is None else off_skill
        if off_skill:
            request = self.rng.choice(OFF_SKILL).format(w1=self.rng.choice(WORDS), w2=self.rng.choice(WORDS),
                                                        place=self.place())
        else:
            request = self.rng.choice(ABOUT_REQUESTS)
        reasoning = {"low": "Describe myself.", "medium": "This is not one of my skills, so I describe myself."
                     if off_skill else "The user asks about me.",
                     "high": "This request is outside arithmetic and tool calls, so I say what I am and what I can do."
                     if off_skill else "The user asks who I am and what I can do."}[effort]
        tools = self.toolset(None)[0] if self.rng.random() < 0.2 else []
        return Example("about", [*self.instructions(), *self.history(), {"role": "user", "content": request}], tools,
                       effort, [Reply("analysis", reasoning), Reply("final", ABOUT_TEXT)], {"about": True}, self.date())

    def chained_turn(self, effort: str, current_date: str | None) -> Example:
        """A request that can follow another in the same conversation: arithmetic or about itself, with
        no tools, instructions or history of its own, under the same system message."""
        example = self.arithmetic(effort, with_tools=False) if self.rng.random() < 0.85 else self.about(effort)
        example.messages, example.tools, example.current_date = example.messages[-1:], [], current_date
        return example

    def example(self) -> Example:
        """One example of a skill drawn by the training mix."""
        roll = self.rng.random()
        if roll < 0.45:  # arithmetic replies also come chained, three to a sequence
            return self.arithmetic()
        if roll < 0.72:
            return self.tool_call()
        if roll < 0.87:
            return self.tool_answer()
        if roll < 0.95:
            return self.no_tool()
        return self.about()


def json_text(value: dict) -> str:
    """Compact JSON, as gpt-oss writes tool arguments."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
