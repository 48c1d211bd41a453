"""A small hand-written POS-tagged sample of fashion-like English (Penn Treebank tags).

Cheatsheet::

    from mmf_fashion.data.tagged_sample import tagged_sentences
    sentences = tagged_sentences()    # [[("red", "JJ"), ("dress", "NN"), ...], ...]

NLTK's pretrained tagger is a download that is not available offline; this
sample trains ``nltk.tag.perceptron.PerceptronTagger(load=False)`` instead
(see mmf_fashion.data.attributes). It is lower-case on purpose: the miner tags
lower-cased text. It covers nouns, adjectives, determiners, verbs,
prepositions, conjunctions, numbers, adverbs and punctuation in the shapes
product titles and descriptions take.
"""

from __future__ import annotations

from typing import List, Tuple

_SAMPLE = """
red/JJ cotton/NN dress/NN with/IN long/JJ sleeves/NNS ./.
black/JJ wool/NN sweater/NN in/IN a/DT relaxed/JJ fit/NN ./.
striped/JJ linen/NN shirt/NN in/IN navy/NN ./.
the/DT blue/JJ jeans/NNS have/VBP five/CD pockets/NNS ./.
this/DT dress/NN has/VBZ a/DT v-neck/NN and/CC short/JJ sleeves/NNS ./.
white/JJ leather/NN sneakers/NNS with/IN a/DT rubber/NN sole/NN ./.
a/DT pleated/JJ skirt/NN falls/VBZ below/IN the/DT knee/NN ./.
green/JJ silk/NN blouse/NN with/IN a/DT square/JJ neckline/NN ./.
polka-dot/JJ mini/JJ dress/NN in/IN pink/NN ./.
checked/JJ flannel/NN shirt/NN with/IN a/DT pointed/JJ collar/NN ./.
brown/JJ suede/NN ankle/NN boots/NNS ./.
long-sleeve/JJ t-shirt/NN in/IN grey/JJ jersey/NN ./.
short-sleeve/JJ polo/NN shirt/NN with/IN a/DT spread/JJ collar/NN ./.
sleeveless/JJ tank/NN top/NN in/IN yellow/NN ./.
purple/JJ tote/NN bag/NN with/IN two/CD handles/NNS ./.
orange/JJ nylon/NN backpack/NN with/IN a/DT front/JJ pocket/NN ./.
the/DT coat/NN is/VBZ belted/VBN at/IN the/DT waist/NN ./.
detachable/JJ black/JJ belt/NN at/IN waist/NN ./.
self-tie/JJ brown/JJ belt/NN ./.
contrast/NN white/JJ rubber/NN sole/NN ./.
tonal/JJ rubber/NN sole/NN ./.
tonal/JJ stitching/NN ./.
machine/NN wash/NN cold/JJ ./.
dry/JJ clean/JJ only/RB ./.
made/VBN in/IN italy/NNP ./.
imported/VBN ./.
model/NN is/VBZ wearing/VBG size/NN m/NN ./.
fits/VBZ true/JJ to/TO size/NN ./.
partially/RB lined/VBN ./.
also/RB available/JJ in/IN green/NN ./.
pair/VB it/PRP with/IN black/JJ jeans/NNS ./.
pair/VB it/PRP with/IN white/JJ sneakers/NNS ./.
crewneck/NN ./.
round/JJ neckline/NN ./.
turtleneck/NN in/IN soft/JJ wool/NN ./.
high/JJ rolled/VBN neck/NN ./.
v-neckline/NN ./.
square/JJ neck/NN ./.
long/JJ sleeves/NNS with/IN buttoned/JJ cuffs/NNS ./.
short/JJ sleeves/NNS with/IN clean/JJ cuffs/NNS ./.
sleeveless/JJ cut/NN with/IN clean/JJ armholes/NNS ./.
maxi/JJ length/NN ./.
midi/JJ length/NN ./.
mini/JJ length/NN ./.
hem/NN falls/VBZ above/IN the/DT knee/NN ./.
floor-length/JJ hem/NN ./.
cropped/JJ leg/NN ./.
full-length/JJ leg/NN ./.
long/JJ straight/JJ leg/NN ./.
cut/VBN above/IN the/DT knee/NN ./.
hip/NN length/NN ./.
knee/NN length/NN ./.
falls/VBZ to/TO the/DT knee/NN ./.
patch/NN pockets/NNS ./.
pockets/NNS at/IN front/NN ./.
front/JJ pocket/NN ./.
spread/JJ collar/NN ./.
pointed/JJ collar/NN ./.
contrasting/VBG white/JJ collar/NN ./.
striped/JJ pattern/NN throughout/IN ./.
horizontal/JJ stripes/NNS ./.
polka-dot/JJ print/NN ./.
allover/JJ dots/NNS ./.
check/NN pattern/NN throughout/IN ./.
plaid/JJ pattern/NN ./.
solid/JJ colour/NN ./.
plain/JJ weave/NN ./.
relaxed/JJ fit/NN ./.
a/DT slim/JJ blazer/NN with/IN notched/JJ lapels/NNS and/CC flap/NN pockets/NNS ./.
the/DT parka/NN has/VBZ a/DT hood/NN and/CC a/DT zip/NN closure/NN ./.
wide-leg/JJ trousers/NNS in/IN charcoal/NN wool/NN ./.
crimson/JJ satin/NN slip/NN dress/NN ./.
emerald/JJ green/JJ wrap/NN dress/NN with/IN a/DT self-tie/JJ belt/NN ./.
cobalt/JJ denim/NN jacket/NN with/IN chest/NN pockets/NNS ./.
ivory/JJ crossbody/NN bag/NN with/IN a/DT long/JJ strap/NN ./.
these/DT loafers/NNS are/VBP made/VBN of/IN soft/JJ leather/NN ./.
she/PRP wears/VBZ a/DT scarlet/JJ skirt/NN and/CC a/DT white/JJ top/NN ./.
the/DT sandals/NNS have/VBP thin/JJ straps/NNS ./.
our/PRP$ model/NN is/VBZ 180/CD cm/NN tall/JJ ./.
wear/VB the/DT jacket/NN open/JJ or/CC closed/VBN ./.
a/DT classic/JJ trench/NN coat/NN in/IN cotton/NN gabardine/NN ./.
gingham/NN shirt/NN dress/NN with/IN buttons/NNS ./.
mustard/JJ hoodie/NN with/IN a/DT kangaroo/NN pocket/NN ./.
navy/JJ blue/JJ chinos/NNS ,/, slim/JJ fit/NN ./.
black/JJ heels/NNS with/IN a/DT pointed/JJ toe/NN ./.
leather/NN clutch/NN with/IN a/DT flap/NN ./.
crimson/JJ striped/JJ long-sleeve/JJ t-shirt/NN
emerald/JJ plaid/JJ mini/JJ skirt/NN
onyx/JJ dotted/JJ crewneck/NN sweater/NN
violet/JJ v-neck/JJ blouse/NN
amber/JJ shoulder/NN bag/NN
lemon/JJ maxi/JJ dress/NN
charcoal/JJ joggers/NNS
rose/JJ sandals/NNS
the/DT colour/NN is/VBZ very/RB bright/JJ and/CC the/DT fabric/NN is/VBZ soft/JJ ./.
it/PRP closes/VBZ with/IN a/DT zip/NN at/IN the/DT back/NN ./.
two/CD side/NN pockets/NNS and/CC one/CD back/JJ pocket/NN ./.
this/DT is/VBZ a/DT new/JJ season/NN style/NN ./.
a/DT red/JJ striped/JJ dress/NN with/IN a/DT belt/NN ./.
the/DT blue/JJ striped/JJ shirt/NN has/VBZ long/JJ sleeves/NNS ./.
a/DT white/JJ dotted/JJ skirt/NN and/CC a/DT black/JJ checked/JJ jacket/NN ./.
she/PRP chose/VBD a/DT green/JJ plaid/JJ coat/NN with/IN wide/JJ lapels/NNS ./.
grey/JJ striped/JJ trousers/NNS with/IN a/DT brown/JJ leather/NN belt/NN ./.
a/DT soft/JJ pink/JJ sweater/NN with/IN short/JJ sleeves/NNS ./.
"""


def tagged_sentences() -> List[List[Tuple[str, str]]]:
    """The sample as NLTK training data: a list of [(word, tag), ...] sentences."""
    sentences = []
    for line in _SAMPLE.strip().splitlines():
        pairs = []
        for token in line.split():
            word, _, tag = token.rpartition("/")
            pairs.append((word, tag))
        sentences.append(pairs)
    return sentences
