"""Classify texts with an exported LTP encoder (tokens are removed between layers inside the graph).

Run: prunex export runs/ltp/bbc --out exported/bbc-ltp && python samples/classify_texts.py exported/bbc-ltp
"""

import sys

import prunex

classifier = prunex.Classifier(sys.argv[1], device="auto")
texts = [
    "Shares in the bank fell sharply after it warned that profits would be lower than expected this year.",
    "The striker scored twice in the second half to give his side a comfortable win at home.",
]
for text, prediction in zip(texts, classifier.classify(texts)):
    print(f"{prediction.label:>12}  p={max(prediction.probabilities):.2f}  tokens {prediction.tokens} -> "
          f"{prediction.tokens_kept}  {text[:60]}...")
