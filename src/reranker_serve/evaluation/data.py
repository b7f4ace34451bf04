"""Test collections in the two common formats, loaded into one shape.

BEIR:  a folder with corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id", "text"})
       and qrels/<split>.tsv (query-id, corpus-id, score; a header line).
TREC:  a corpus of <DOC><DOCNO>id</DOCNO> ... </DOC> records (one file or a folder of them),
       a topics file of <top><num>id</num><title>text</title> ... </top>, and qrels lines
       "qid iteration docid relevance". A folder laid out like ../shared/data/vaswani is found
       by itself; otherwise name the three files.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Collection", "load_beir", "load_collection", "load_trec", "read_run"]


@dataclass
class Collection:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    name: str = ""

    def judged_queries(self) -> list[str]:
        """Queries with at least one relevant document, in a stable order."""
        return sorted((q for q, rels in self.qrels.items() if any(r > 0 for r in rels.values()) and q in self.queries),
                      key=_natural)


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))


# -- BEIR ---------------------------------------------------------------------------------------
def load_beir(folder: Path, *, split: str = "test") -> Collection:
    corpus = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                title, text = doc.get("title") or "", doc.get("text") or ""
                corpus[str(doc["_id"])] = f"{title}\n{text}".strip() if title else text
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                queries[str(q["_id"])] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    qrels_file = folder / "qrels" / f"{split}.tsv"
    with open(qrels_file, encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        for row in rows:
            if not row or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return Collection(corpus, queries, qrels, name=folder.name)


# -- TREC ---------------------------------------------------------------------------------------
_DOC = re.compile(r"<DOC>(.*?)</DOC>", re.S | re.I)
_DOCNO = re.compile(r"<DOCNO>\s*(.*?)\s*</DOCNO>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_TOP = re.compile(r"<top>(.*?)</top>", re.S | re.I)
_NUM = re.compile(r"<num>\s*(?:Number:)?\s*([^<\s]+)", re.S | re.I)
_TITLE = re.compile(r"<title>\s*(?:Topic:)?(.*?)(?=<|\Z)", re.S | re.I)


def _read_trec_corpus(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    corpus = {}
    for file in files:
        for record in _DOC.findall(file.read_text(encoding="utf-8", errors="replace")):
            docno = _DOCNO.search(record)
            if docno:
                body = _DOCNO.sub(" ", record, count=1)
                corpus[docno.group(1).strip()] = " ".join(_TAG.sub(" ", body).split())
    return corpus


def _read_trec_topics(path: Path) -> dict[str, str]:
    topics = {}
    for block in _TOP.findall(path.read_text(encoding="utf-8", errors="replace")):
        num, title = _NUM.search(block), _TITLE.search(block)
        if num and title:
            topics[num.group(1).strip()] = " ".join(title.group(1).split())
    return topics


def _read_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            qrels.setdefault(parts[0], {})[parts[2]] = int(float(parts[3]))
    return qrels


def load_trec(corpus: Path, topics: Path, qrels: Path, *, name: str = "") -> Collection:
    return Collection(_read_trec_corpus(corpus), _read_trec_topics(topics), _read_trec_qrels(qrels), name=name)


def read_run(path: Path) -> dict[str, dict[str, float]]:
    """A TREC run file: "qid Q0 docid rank score tag" per line."""
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 5:
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    return run


def load_collection(path: Path, *, split: str = "test") -> Collection:
    """A BEIR folder, or a TREC folder with a corpus, a topics file and a qrels file."""
    if (path / "corpus.jsonl").is_file():
        return load_beir(path, split=split)
    files = [p for p in path.rglob("*") if p.is_file()]
    qrels = [p for p in files if "qrel" in p.name.lower()]
    topics = [p for p in files if p not in qrels and "<top>" in p.read_text(errors="replace")[:5000].lower()]
    corpus = [p for p in files if p not in qrels and p not in topics and "<doc>" in p.read_text(errors="replace")[:5000].lower()]
    if len(qrels) != 1 or len(topics) != 1 or not corpus:
        raise ValueError(
            f"{path}: expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a TREC folder with one qrels "
            f"file, one topics file and <DOC> corpus files; found qrels={len(qrels)}, topics={len(topics)}, "
            f"corpus files={len(corpus)}"
        )
    collection = load_trec(corpus[0] if len(corpus) == 1 else corpus[0].parent, topics[0], qrels[0], name=path.name)
    return collection
