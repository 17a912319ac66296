"""Does a PAC file's FindProxyForURL read its url? A small JavaScript scanner, sans-IO.

Owns: `js_tokens` (JavaScript text as tokens, comments, white space and literal texts dropped;
ValueError wherever a scanner cannot be sure) and `uses_first_argument`. pac.py asks once per
compiled PAC: a function that never reads its url lets the decision cache key on the host alone.
Must not: run JavaScript; answer "no" when unsure (a wrong "no" would serve one URL's decision
for another on the same host).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_JS_TOKEN = re.compile(
    r"""(?P<space>[\s\ufeff]*[\n\r\u2028\u2029][^\S\n\r\u2028\u2029]*-->[^\n\r\u2028\u2029]*
        |[\s\ufeff]+)
    | (?P<comment>//[^\n\r\u2028\u2029]*|/\*[\s\S]*?\*/|<!--[^\n\r\u2028\u2029]*)
    | (?P<lit>"(?:[^"\\\n\r]|\\(?:\r\n|[\s\S]))*"|'(?:[^'\\\n\r]|\\(?:\r\n|[\s\S]))*')
    | (?P<name>(?:[^\W\d]|\$)[\w$]*)
    | (?P<num>\.?\d[\w$.]*)
    | (?P<punct>\.\.\.|\?\.(?!\d)|\+\+|--|=>|[^\s\\`"'/])""",
    re.VERBOSE,
)
_JS_REGEX = re.compile(r"/(?:[^\\/\[\n\r]|\\[^\n\r]|\[(?:[^\\\]\n\r]|\\[^\n\r])*\])+/[\w$]*")
_JS_TEMPLATE = re.compile(r"(?:[^`\\$]|\\[\s\S]|\$(?!\{))*(`|\$\{)")
_JS_HEADS = frozenset({"if", "while", "for", "with"})
_JS_BEFORE_EXPRESSION = frozenset(
    {"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case"}
    | {"do", "else", "yield", "await"}
)
_JS_OPAQUE = frozenset({"arguments", "eval", "Function"})
_JS_MAYBE_OPAQUE = re.compile(r"arguments|eval|Function|native|\\u")
_JS_MEMBER = (("punct", "."), ("punct", "?."))
JsToken = tuple[str, str]


def _js_regex_allowed(prev: JsToken | None) -> bool | None:
    """Does a "/" after `prev` start a regular expression (True) or divide (False)? None after
    a "}", a block's end or an object's: only a parser can tell."""
    if prev is None or prev[0] == "head":
        return True
    kind, text = prev
    if kind == "name":
        return text in _JS_BEFORE_EXPRESSION
    if kind in ("num", "lit") or text in (")", "]", "++", "--"):
        return False
    return None if text == "}" else True


def js_tokens(source: str) -> Iterator[JsToken]:
    """JavaScript source as (kind, text) tokens: name, num, punct, head (the ")" closing an
    if/while/for/with head) and lit (a string, template or regular-expression literal, text
    dropped); comments and white space dropped. Raises ValueError where unsure: a literal or
    comment left open, a backslash outside literals (an escaped name), unbalanced brackets, or
    a "/" right after a "}"."""
    prev: JsToken | None = None
    braces: list[bool] = []  # True: the "${" of a template
    parens: list[bool] = []  # True: the "(" of an if/while/for/with head
    pos, end = 0, len(source)
    while pos < end:
        char = source[pos]
        if char == "`" or (char == "}" and braces and braces[-1]):
            if char == "}":
                braces.pop()
            chunk = _JS_TEMPLATE.match(source, pos + 1)
            if chunk is None:
                raise ValueError("a template left open")
            if chunk[1] == "${":
                braces.append(True)
            prev, pos = ("lit", "") if chunk[1] == "`" else ("punct", "${"), chunk.end()
            yield prev
            continue
        if char == "/" and source[pos + 1 : pos + 2] not in ("/", "*"):
            regex = _js_regex_allowed(prev)
            literal = _JS_REGEX.match(source, pos) if regex else None
            if regex is None or (regex and literal is None):
                raise ValueError("a regular expression or a division?")
            prev = ("lit", "") if literal else ("punct", "/")
            pos = literal.end() if literal else pos + 1
            yield prev
            continue
        match = _JS_TOKEN.match(source, pos)
        if match is None:
            raise ValueError("a literal or comment left open, or a backslash")
        pos, kind, text = match.end(), str(match.lastgroup), match[0]
        if kind in ("space", "comment"):
            continue
        if text == "(":
            parens.append(prev is not None and prev[0] == "name" and prev[1] in _JS_HEADS)
        elif text == "{":
            braces.append(False)
        elif text in (")", "}"):
            stack = parens if text == ")" else braces
            if not stack:
                raise ValueError("unbalanced brackets")
            kind = "head" if stack.pop() else kind
        prev = (kind, "" if kind == "lit" else text)
        yield prev
    if parens or braces:
        raise ValueError("unbalanced brackets")


def _first_parameter(tokens: Iterator[JsToken]) -> JsToken | None:
    """The first parameter's name token (None: no parameters), read off the function's head
    (names and "*" up to "(", or a lone name before "=>"); ValueError for anything else."""
    head: list[JsToken] = []
    for token in tokens:
        if token[1] == "=>" and head:
            return head[-1]
        if token[1] == "(":
            first = next(tokens)
            if first == ("punct", ")"):
                return None
            if first[0] == "name" and next(tokens)[1] in (",", ")", "="):
                return first
            break
        if token[0] != "name" and token[1] != "*":
            break
        head.append(token)
    raise ValueError("not a plain first parameter")


def uses_first_argument(source: str) -> bool:
    """Might the JavaScript function whose text is `source` (Function.prototype.toString) read
    its first argument? Conservative: False only when that parameter is a plain name used
    nowhere else as a name (comments, literals and property names after "." do not count) and
    neither `arguments`, `eval` nor `Function` appears; True for native or bound functions and
    for any text js_tokens is unsure about. Stops at the first use."""
    tokens = js_tokens(source)
    try:
        param = _first_parameter(tokens)
        if param is not None and param[1] in _JS_OPAQUE:
            return True
        if _JS_MAYBE_OPAQUE.search(source) is None and (
            param is None or source.count(param[1]) == 1
        ):
            return False  # the name is nowhere else, not even escaped: no need to look closer
        prev: JsToken | None = None
        for token in tokens:
            kind, text = token
            if kind == "name" and (
                text in _JS_OPAQUE
                or (token == param and prev not in _JS_MEMBER)
                or (text == "code" and prev == ("name", "native"))  # "[native code]"
            ):
                return True
            prev = token
    except (ValueError, StopIteration):
        return True
    return False
