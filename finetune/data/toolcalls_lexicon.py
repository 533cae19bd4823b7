"""What a pathologist calls each shipped tool's job, in three grammatical forms, for the concept families of the
tool-invocation data (:mod:`pathasst.finetune.data.toolcalls_families`).

``ASK[tool]`` holds ``noun`` phrases ("the TIL density"), ``verb`` phrases ("score the TILs") and whole ``question``
sentences; the placeholders are ``{img}`` (image word for the kind), ``{m}`` (the case's marker), ``{tumour}`` (a
tumour name) and ``{stain}``. ``KINDS`` restricts a tool's wordings to an image kind, ``DIAGNOSTIC`` lists questions
whose tool depends on the image kind, ``DEFINITIONS`` / ``UNSUPPORTED`` are asked of a case but need no tool.
"""

from __future__ import annotations

__all__ = ["ASK", "DEFINITIONS", "DEF_TEMPLATES", "DIAGNOSTIC", "IMG", "KINDS", "MARKERS", "TUMOURS", "UNSUPPORTED",
           "cap"]

ASK: dict[str, dict[str, list[str]]] = {
    "nuclei_segmentation": {
        "noun": ["the TIL density", "a stromal TILs percentage", "the density of tumour-infiltrating lymphocytes",
                 "the N:C ratio", "the nuclear-to-cytoplasmic ratio", "the degree of nuclear pleomorphism",
                 "the lymphocyte count", "the immune-cell density", "a nucleus count", "the cellularity",
                 "nuclear size and shape", "a TILs score", "the number of inflammatory cells", "the cell types"],
        "verb": ["count the lymphocytes", "score the TILs", "assess nuclear pleomorphism", "estimate the N:C ratio",
                 "quantify the tumour-infiltrating lymphocytes", "measure the nuclei", "count the immune cells",
                 "segment the nuclei and type the cells", "count the cells", "evaluate nuclear atypia",
                 "measure the lymphocytic infiltrate"],
        "question": ["How many lymphocytes infiltrate the tumour?", "Are the TILs sparse or dense?",
                     "How pleomorphic are the nuclei?", "What's the N:C ratio in this {img}?",
                     "How heavy is the lymphocytic infiltrate?", "Is the nuclear-cytoplasmic ratio raised?",
                     "TILs?", "Stromal TIL percentage?", "How much do the nuclei vary in size?",
                     "Are the nuclei hyperchromatic?", "Any prominent nucleoli?", "TIL density in this {img}?",
                     "Is there marked nuclear atypia?", "How many immune cells are in the stroma?",
                     "N/C ratio?", "Pleomorphism score?", "Lymphocyte density?"],
    },
    "mitosis_detection": {
        "noun": ["the mitotic count", "the tumour grade", "the Nottingham grade", "the histological grade",
                 "a mitotic score for grading", "the mitotic activity", "the Bloom-Richardson grade",
                 "the number of mitoses per 10 HPF"],
        "verb": ["grade this {tumour}", "grade the tumour", "count mitoses", "assign a Nottingham grade",
                 "score mitotic activity", "give this {tumour} a grade", "count the dividing cells"],
        "question": ["What grade would you give this {tumour}?", "Grade?", "How would you grade this {tumour}?",
                     "Is this a high-grade {tumour}?", "Low or high grade?", "What's the histologic grade?",
                     "Bloom-Richardson grade for this {tumour}?", "How many mitoses in 10 high-power fields?",
                     "Is mitotic activity brisk?", "Please grade this {tumour}.", "Grade this {tumour}, please.",
                     "Can you grade it?", "Nottingham grade?", "How mitotically active is this {tumour}?"],
    },
    "tumor_segmentation": {
        "noun": ["the tumour percentage", "the tumour content", "the tumour fraction", "the tumour cell content",
                 "the necrotic fraction", "the stromal fraction", "the tumour-stroma ratio", "the tumour area",
                 "the percentage of necrosis", "a tumour heatmap"],
        "verb": ["estimate the tumour percentage", "map the tumour", "work out how much is tumour",
                 "quantify the necrosis", "outline the tumour", "measure the tumour area",
                 "calculate the tumour-stroma ratio"],
        "question": ["What percentage of this {img} is tumour?", "How much of the tissue is carcinoma?",
                     "What fraction is viable tumour?", "Tumour percentage?", "Is there enough tumour for sequencing?",
                     "Roughly how much tumour is present?", "What proportion of the {img} is necrotic?",
                     "How much is tumour and how much stroma?", "Tumour content for NGS?",
                     "What percent of the {img} is cancer?", "How much necrosis is there?",
                     "Is the tumour content above 20%?", "What is the tumour cellularity for molecular work?"],
    },
    "slide_classification": {
        "noun": ["the diagnosis", "a slide-level diagnosis", "the final call", "the most likely diagnosis",
                 "the slide label", "a diagnosis"],
        "verb": ["diagnose this slide", "classify the slide", "tell me what this slide is", "give me the diagnosis",
                 "classify this case", "make a diagnosis"],
        "question": ["What is this {img}?", "What's on this {img}?", "What does this {img} show?",
                     "Any metastatic tumour in this node?", "What kind of cancer is this?", "Which subtype is this?",
                     "Is there carcinoma on this {img}?", "Diagnosis?", "Is this lymph node involved?",
                     "What is your diagnosis?", "Is this {img} positive for cancer?", "What type of tumour is this?"],
    },
    "tissue_classification": {
        "noun": ["the tissue class", "the CRC-100K class", "the tissue type", "a tissue label", "the Kather class"],
        "verb": ["classify this {img}", "label the tissue", "assign a CRC-100K class to this {img}",
                 "tell me the tissue type", "sort this {img} into the colorectal tissue classes",
                 "classify the tissue"],
        "question": ["Which CRC-100K class fits this {img}?", "Is this fat, muscle or stroma?",
                     "Is this tumour epithelium?", "Is this normal mucosa?", "Which tissue class is this {img}?",
                     "Is this {img} mucus or debris?", "Lymphocytes or stroma in this {img}?",
                     "Which of the nine colorectal classes is this?", "Is this {img} adenocarcinoma?"],
    },
    "tissue_qc": {
        "noun": ["a quality check", "a focus check", "QC", "the tissue coverage", "an artefact check",
                 "a check for folds and bubbles", "a blur check"],
        "verb": ["check whether there is any tissue", "check the scan quality", "make sure the {img} is in focus",
                 "look for pen marks", "check the stain quality", "check for artefacts", "run QC"],
        "question": ["Is there any tissue on this {img}?", "Is this {img} empty?",
                     "Does the {img} contain tissue at all?",
                     "Is it just background?", "Is there enough tissue to analyse?", "Is the tissue adequate?",
                     "Is this {img} blurry?", "Are there bubbles or folds?", "Is the staining too faint?",
                     "Blank {img}?", "Any tissue here at all?", "Is the scan good enough?", "Can we use this {img}?",
                     "Is anything on the glass?", "Is the {img} sharp enough to read?"],
    },
    "similar_cases": {
        "noun": ["similar cases", "comparable cases", "look-alike cases from the archive", "reference cases",
                 "the nearest cases in the library", "matching archive cases"],
        "verb": ["find similar cases", "retrieve comparable cases", "pull matching cases from the archive",
                 "search the library for look-alikes", "show me previous cases like this", "look up similar cases"],
        "question": ["Have we seen something like this before?", "Ever come across a case like this?",
                     "Anything similar in the archive?", "Are there past cases that resemble this?",
                     "Can you retrieve comparable {stain} cases?", "Which earlier cases look like this?",
                     "Do we have reference cases like this one?", "Seen this pattern before?",
                     "Any look-alikes in our library?", "Got any similar {stain} cases?"],
    },
    "ihc_quantification": {
        "noun": ["the {m} index", "the {m} score", "the H-score", "the percentage of {m}-positive nuclei",
                 "the {m} positivity", "the {m} readout", "the {m} labelling index"],
        "verb": ["score {m}", "quantify {m}", "count the {m}-positive cells", "read out the {m} hotspot",
                 "quantify the staining", "score the stain"],
        "question": ["What is the {m} labelling index?", "How many nuclei are {m} positive?", "{m} proportion?",
                     "What fraction of tumour cells express {m}?", "How strongly is {m} expressed?",
                     "{m} readout?", "Is {m} high?", "{m} percent positive?"],
    },
}
KINDS = {"slide_classification": ["wsi"], "tissue_classification": ["patch"]}
IMG = {"patch": ["image", "patch", "tile", "field", "crop"], "wsi": ["slide", "section", "whole slide", "WSI"]}
MARKERS = {"Ki-67": ["Ki-67", "Ki67", "MIB-1"], "ER": ["ER", "oestrogen receptor"],
           "PR": ["PR", "progesterone receptor"], "PD-L1": ["PD-L1", "PDL1", "PD-L1 22C3"]}
TUMOURS = ["invasive ductal carcinoma", "breast carcinoma", "sarcoma", "carcinoma", "tumour", "leiomyosarcoma",
           "lobular carcinoma", "neuroendocrine tumour", "GIST", "adenocarcinoma", "lesion"]

#: diagnostic questions: tissue classification on a patch, slide classification on a slide
DIAGNOSTIC = ["Is this {img} benign or malignant?", "Benign or malignant?", "Malignant or benign?", "Is this cancer?",
              "What is this?", "What's in this {img}?", "What do you make of this {img}?", "Normal or tumour?",
              "Is this tissue malignant?", "Any malignancy here?", "Is this {img} normal?", "Cancer or not?",
              "What am I looking at?", "Tell me what this {img} shows.", "Your impression of this {img}?",
              "Is there tumour in this {img}?", "Is this neoplastic?", "Reactive or malignant?"]

#: (term, stain of the case) for questions about a concept, not about the case
DEFINITIONS = [("a mitotic figure", "H&E"), ("the Ki-67 index", "Ki-67"), ("the Ki-67 cut-off for luminal B", "Ki-67"),
               ("TPS", "PD-L1"), ("the combined positive score", "PD-L1"), ("the Allred score", "ER"),
               ("the H-score", "PR"), ("the Nottingham grading system", None), ("the tumour-stroma ratio", "H&E"),
               ("TILs", "H&E"), ("nuclear pleomorphism", "H&E"), ("a high-power field", "H&E"),
               ("the Gleason system", None), ("the N:C ratio", "H&E"), ("MIB-1", "Ki-67"), ("PD-L1 22C3", "PD-L1"),
               ("ER low positivity", "ER"), ("tumour budding", "H&E"), ("the Bloom-Richardson grade", "H&E"),
               ("CRC-100K", "H&E"), ("a whole-slide image", None), ("tissue QC", "H&E"), ("necrosis", "H&E"),
               ("the 1% ER threshold", "ER"), ("HER2 scoring", "HER2"), ("the Breslow depth", None)]
DEF_TEMPLATES = ["What is {t}?", "How is {t} calculated in general?", "How do pathologists usually score {t}?",
                 "What are the criteria for {t}?", "Explain {t} briefly.", "What cut-off is used for {t}?",
                 "Why is {t} clinically important?", "Is {t} prognostic?", "In general terms, what counts as {t}?",
                 "Who introduced {t}?", "What does the term {t} mean?", "Give me a textbook definition of {t}.",
                 "How reproducible is {t} between observers?", "What's the history of {t}?"]

#: markers no tool measures, with the stain label of the case
UNSUPPORTED = {"HER2": ["HER2", "HER2/neu", "c-erbB-2", "HER-2"], "p53": ["p53"], "CD8": ["CD8"], "MLH1": ["MLH1"],
               "CD20": ["CD20"], "ALK": ["ALK"]}


def cap(text: str) -> str:
    """``text`` with its first letter upper case (an acronym such as "TILs" or "ER" is left as it is)."""
    return text[0].upper() + text[1:] if text and not text[:2].isupper() else text
