"""Generate the small synthetic URE dataset in data/train.json and data/test.json.

Every sentence is filled in from the hand-written templates below, and every
name is invented. Only the standard library is used, with fixed seeds, so
running `python data/make_data.py` twice writes byte-identical files.
Output format: TACRED-style JSON (a list of objects, spans inclusive).
"""
import json
import os
import random
import re
from collections import Counter

SEED = 13
TRAIN_PER_REL, TEST_PER_REL, JITTER = 64, 20, (6, 2)  # mild imbalance: +-JITTER

# ---------------------------------------------------------------- entity pools
FIRST = """Maria Tomas Anika Ravi Lena Oskar Yara Felix Ines Kenji Amara Dmitri Sofia
Mateo Nadia Elias Priya Jonas Leila Marco Hana Viktor Zora Idris Clara Bram Mirela
Tariq Elsa Nikolai Ayla Rohan Greta Samir Ottilie Luca Freya Emeka Ilse Pavel""".split()
SURNAMES = """Kovacs Brandt Okafor Lindqvist Moreau Tanaka Petrov Halloran Ferreira Novak
Achterberg Quispe Morland Castellan Varga Ibsen Dalca Renwick Szabo Oyelaran Thorne
Abernathy Kessler Marchetti Haddad Voskuijl Pendry Arslan Whitcombe Jaramillo Okonkwo
Strand Bellweather Nakashima Ferrante Grig""".split() + ["van Dalen", "de la Cruz", "Ben Ami", "Le Gall"]
CITIES = ["Valmora", "Port Eskel", "Drennick", "Saint Aubrel", "Lower Fenwick", "Karsova",
          "Oldbridge", "Brevik Harbour", "Tallowmere", "Quennis", "New Caldera", "Marrowfield",
          "Estrela Nova", "Vintry", "Helmsby", "Ostragrad", "Kestrel Bay", "Amberlin", "Duskwater",
          "Ravenholt", "Solmere", "Fort Adley", "Cindral", "Pellingham", "Zarovo", "Lake Ormond",
          "Hollin Cross", "Merevale", "Tirsk", "San Teodoro del Mar", "Gallowbrook", "Upper Wenn"]
ORG_WORDS = """Harlow Meridian Calder Brightwater Northgate Silverline Ironwood Bluefin Cobalt
Orchard Keystone Lumen Pinecrest Redfern Summit Tidewater Vantage Westbrook Alder Granite""".split()
ORG_KINDS = ["Instruments", "Bank", "Logistics", "Foods", "Labs", "Press", "Group", "Textiles",
             "Energy", "Holdings", "Robotics", "Pharmaceuticals", "Software", "Motors",
             "Insurance", "Airways", "Media", "Brewing", "& Sons", "Shipping Company"]


def person(rng):
    return f"{rng.choice(FIRST)} {rng.choice(SURNAMES)}"


def organization(rng):
    return f"{rng.choice(ORG_WORDS)} {rng.choice(ORG_KINDS)}"


POOLS = {"PERSON": person, "CITY": lambda rng: rng.choice(CITIES), "ORGANIZATION": organization}

# ------------------------------------------- relations: (head type, tail type), templates
# {H} = head (subject) entity, {T} = tail (object) entity. Several relations share a type
# pair, and shared distractor phrases ("the city", "the company", "the family") appear
# across relations of one pair, so only the wording around the entities gives the relation.
RELATIONS = {
    "born_in": ("PERSON", "CITY", [
        "{H} was born in {T} .", "{H} was born in the city of {T} .",
        "{T} is where {H} was born .", "{T} , where {H} was born , is a small city by the river .",
        "{H} , a native of {T} , rarely talks about the city .",
        "{T} , the birthplace of {H} , is a quiet city on the coast .",
        "{H} was born and raised in {T} .", "{H} , who was born in {T} , later became a teacher .",
        "The birthplace of {H} is {T} .", "{H} came into the world in {T} during a cold winter ."]),
    "lives_in": ("PERSON", "CITY", [
        "{H} lives in {T} .", "{H} currently lives in the city of {T} .",
        "{H} has lived in {T} for many years .",
        "{T} is home to {H} , who moved to the city a decade ago .",
        "{H} , a resident of {T} , walks to work every day .", "{H} resides in {T} with two dogs .",
        "Residents of {T} include {H} , who settled in the city recently .",
        "{H} rents a small flat in {T} .", "{H} now calls {T} home .",
        "Neighbours in {T} often see {H} at the market near the house ."]),
    "died_in": ("PERSON", "CITY", [
        "{H} died in {T} .", "{H} passed away in the city of {T} .", "{T} is where {H} died .",
        "{H} died at a hospital in {T} after a long illness .",
        "{H} , who died in {T} , was buried near the old house .",
        "In {T} , {H} passed away peacefully .", "The death of {H} in {T} shocked the city .",
        "{H} was killed in a car accident in {T} .", "{T} mourned {H} , who died there .",
        "{H} spent the last days of a long life in a hospice in {T} before dying ."]),
    "mayor_of": ("PERSON", "CITY", [
        "{H} is the mayor of {T} .", "{H} was elected mayor of {T} .",
        "{T} elected {H} as its mayor .", "The mayor of {T} , {H} , opened the new bridge .",
        "{H} governs the city of {T} as mayor .",
        "{H} , mayor of {T} , announced a new budget for the city .",
        "{H} took office as mayor of {T} .", "Voters in {T} chose {H} to run the city hall .",
        "{T} mayor {H} spoke at the ceremony .", "{H} has led the city council of {T} since the election ."]),
    "works_for": ("PERSON", "ORGANIZATION", [
        "{H} works for {T} .", "{H} is an engineer at {T} .",
        "{H} has been employed by {T} for years .", "{T} hired {H} as an analyst .",
        "{H} , a spokesperson for {T} , declined to comment on the company .",
        "{T} employs {H} as a senior accountant .", "{H} joined the staff of {T} last spring .",
        "{H} works as a designer at the company {T} .", "Among the employees of {T} is {H} .",
        "{H} , who works at {T} , drives to the office every morning ."]),
    "founded": ("PERSON", "ORGANIZATION", [
        "{H} founded {T} .", "{T} was founded by {H} .", "{H} is the founder of {T} .",
        "{H} established {T} in a small garage .",
        "{T} , a company started by {H} , is growing fast .", "{H} set up {T} with borrowed money .",
        "The founder of {T} , {H} , gave a speech to the staff .", "{H} co-founded {T} with a friend .",
        "{T} owes its existence to {H} , who created the company .",
        "{H} launched {T} after leaving university ."]),
    "invested_in": ("PERSON", "ORGANIZATION", [
        "{H} invested in {T} .", "{H} bought a large stake in {T} .",
        "{H} is a major shareholder of {T} .", "{T} received funding from {H} .",
        "{T} is backed by {H} , a wealthy investor .", "{H} owns shares in the company {T} .",
        "{H} poured money into {T} last year .", "Shares of {T} were bought by {H} .",
        "{H} , an early investor in {T} , made a fortune .",
        "{H} financed the expansion of {T} and joined the board of the company ."]),
    "spouse_of": ("PERSON", "PERSON", [
        "{H} is married to {T} .", "{H} married {T} .", "{H} and {T} got married in the spring .",
        "{T} , the spouse of {H} , attended the event .", "{H} wed {T} in a small ceremony .",
        "{H} has been married to {T} for twenty years .",
        "{H} and spouse {T} welcomed the guests to the family home .",
        "{H} tied the knot with {T} .", "The wedding of {H} and {T} brought the whole family together .",
        "{T} became the spouse of {H} ."]),
    "parent_of": ("PERSON", "PERSON", [
        "{H} is the parent of {T} .", "{T} is the child of {H} .",
        "{H} raised {T} alone after the divorce .",
        "{T} , the eldest child of {H} , joined the family business .",
        "{H} , whose child {T} is a doctor , visits the family often .",
        "{T} inherited the family house from {H} , a devoted parent .",
        "{H} has a child named {T} .", "As a parent , {H} taught {T} to read .",
        "{T} grew up as the only child of {H} .", "{H} adopted {T} as a baby ."]),
    "sibling_of": ("PERSON", "PERSON", [
        "{H} is the sibling of {T} .", "{H} and {T} are siblings .",
        "{T} , a younger sibling of {H} , joined the family business .",
        "{H} shares both parents with {T} .", "{H} and {T} grew up as siblings in the same family .",
        "{H} has a sibling named {T} .", "{T} is the twin of {H} .",
        "{H} , whose sibling {T} is a doctor , visits the family often .",
        "As siblings , {H} and {T} fought constantly .", "{T} and {H} were raised by the same parents ."]),
}

# Optional framing shared by ALL relations, so topic words do not give the relation away.
PREFIXES = ["According to a local newspaper ,", "Friends recall that", "Records show that",
            "In {YEAR} ,", "By all accounts ,", "A recent profile noted that",
            "It is often said that", "In an interview , a colleague explained that",
            "As far as anyone knows ,", "Few people know that"]
SUFFIXES = [", the report said .", ", sources confirmed .", ", according to public records .",
            ", as the archive shows .", ", a neighbour said .", ", officials noted ."]

TOKEN_RE = re.compile(r"\{H\}|\{T\}|'s|\w+(?:-\w+)*|[^\w\s]")


def render(rng, template, head, tail):
    """Fill a template; return (tokens, head span, tail span), spans inclusive."""
    words = TOKEN_RE.findall(template)
    if rng.random() < 0.3:                       # shared suffix replaces the final "."
        words = words[:-1] + TOKEN_RE.findall(rng.choice(SUFFIXES))
    if rng.random() < 0.35:                      # shared prefix; lower-case a plain first word
        prefix = rng.choice(PREFIXES).replace("{YEAR}", str(rng.randint(1955, 2021)))
        if words[0] not in ("{H}", "{T}"):
            words[0] = words[0].lower()
        words = TOKEN_RE.findall(prefix) + words
    tokens, spans = [], {}
    for w in words:
        if w in ("{H}", "{T}"):
            name = head if w == "{H}" else tail
            spans[w] = (len(tokens), len(tokens) + len(name.split()) - 1)
            tokens.extend(name.split())
        else:
            tokens.append(w)
    return tokens, spans["{H}"], spans["{T}"]


def generate(split, per_rel, jitter, rng, seen):
    data = []
    for rel, (htype, ttype, templates) in RELATIONS.items():
        n = per_rel + rng.randint(-jitter, jitter)
        made = 0
        while made < n:
            head, tail = POOLS[htype](rng), POOLS[ttype](rng)
            if head == tail:
                continue
            tokens, (hs, he), (ts, te) = render(rng, rng.choice(templates), head, tail)
            if tuple(tokens) in seen:           # no duplicate sentences within or across splits
                continue
            seen.add(tuple(tokens))
            assert " ".join(tokens[hs:he + 1]) == head and " ".join(tokens[ts:te + 1]) == tail
            assert he < ts or te < hs           # head and tail spans never overlap
            data.append({"relation": rel, "token": tokens, "subj_start": hs, "subj_end": he,
                         "obj_start": ts, "obj_end": te, "subj_type": htype, "obj_type": ttype})
            made += 1
    rng.shuffle(data)
    return [{"id": f"{split}-{i:04d}", **ex} for i, ex in enumerate(data, 1)]


def write(path, data):
    # One object per line: valid JSON, readable, diff-friendly, byte-stable.
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("[\n" + ",\n".join(json.dumps(ex, ensure_ascii=False) for ex in data) + "\n]\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    seen = set()
    splits = {"train": generate("train", TRAIN_PER_REL, JITTER[0], random.Random(SEED), seen),
              "test": generate("test", TEST_PER_REL, JITTER[1], random.Random(SEED + 1), seen)}
    for split, data in splits.items():
        write(os.path.join(here, f"{split}.json"), data)
        lengths = sorted(len(ex["token"]) for ex in data)
        print(f"{split}: {len(data)} instances, tokens min/median/max = "
              f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}")
        for rel, c in sorted(Counter(ex["relation"] for ex in data).items()):
            print(f"  {rel:<12} {c}")
        for pair, c in sorted(Counter((ex["subj_type"], ex["obj_type"]) for ex in data).items()):
            print(f"  {pair[0]}-{pair[1]:<14} {c}")


if __name__ == "__main__":
    main()
