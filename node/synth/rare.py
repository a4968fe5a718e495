"""A catalogue of rare diseases with free-text descriptions and phenotype profiles (HPO).

For zero-shot evaluation (issue 9): a model sees the ``description`` of a disease it was never
trained on and must rank it for a patient whose record holds only phenotypes.  Each patient gets
each profile phenotype with its frequency, plus background noise phenotypes.  Diseases are coded in
the local ``synth-diagnosis`` system (``RD01``..``RD20``); the descriptions are written for this
generator, paraphrasing textbook presentations.
"""

from __future__ import annotations

HP = {
    "HP:0001250": "Seizure",
    "HP:0001263": "Global developmental delay",
    "HP:0000252": "Microcephaly",
    "HP:0001249": "Intellectual disability",
    "HP:0001252": "Hypotonia",
    "HP:0001166": "Arachnodactyly",
    "HP:0001519": "Disproportionate tall stature",
    "HP:0001083": "Ectopia lentis",
    "HP:0002616": "Aortic root aneurysm",
    "HP:0001382": "Joint hypermobility",
    "HP:0000974": "Hyperextensible skin",
    "HP:0000957": "Cafe-au-lait spot",
    "HP:0009732": "Plexiform neurofibroma",
    "HP:0002650": "Scoliosis",
    "HP:0000256": "Macrocephaly",
    "HP:0004322": "Short stature",
    "HP:0000316": "Hypertelorism",
    "HP:0001631": "Atrial septal defect",
    "HP:0000518": "Cataract",
    "HP:0000639": "Nystagmus",
    "HP:0001251": "Ataxia",
    "HP:0001639": "Hypertrophic cardiomyopathy",
    "HP:0003236": "Elevated circulating creatine kinase concentration",
    "HP:0001644": "Dilated cardiomyopathy",
    "HP:0002093": "Respiratory insufficiency",
    "HP:0000083": "Renal insufficiency",
    "HP:0001744": "Splenomegaly",
    "HP:0002240": "Hepatomegaly",
    "HP:0001903": "Anemia",
    "HP:0001873": "Thrombocytopenia",
    "HP:0002205": "Recurrent respiratory infections",
    "HP:0002110": "Bronchiectasis",
    "HP:0001508": "Failure to thrive",
    "HP:0002024": "Malabsorption",
    "HP:0000407": "Sensorineural hearing impairment",
    "HP:0000510": "Rod-cone dystrophy",
    "HP:0001159": "Syndactyly",
    "HP:0010442": "Polydactyly",
    "HP:0000028": "Cryptorchidism",
    "HP:0000175": "Cleft palate",
    "HP:0001643": "Patent ductus arteriosus",
    "HP:0003324": "Generalized muscle weakness",
    "HP:0000819": "Diabetes mellitus",
    "HP:0000821": "Hypothyroidism",
    "HP:0002659": "Increased susceptibility to fractures",
    "HP:0000592": "Blue sclerae",
    "HP:0000717": "Autism",
    "HP:0001332": "Dystonia",
    "HP:0002072": "Chorea",
    "HP:0001257": "Spasticity",
    "HP:0002376": "Developmental regression",
    "HP:0003128": "Lactic acidosis",
    "HP:0001943": "Hypoglycemia",
    "HP:0001987": "Hyperammonemia",
    "HP:0001635": "Congestive heart failure",
    "HP:0001657": "Prolonged QT interval",
    "HP:0001279": "Syncope",
    "HP:0012378": "Fatigue",
    "HP:0002315": "Headache",
    "HP:0002013": "Vomiting",
    "HP:0000093": "Proteinuria",
    "HP:0000790": "Hematuria",
    "HP:0001297": "Stroke",
    "HP:0000113": "Polycystic kidney dysplasia",
    "HP:0001394": "Cirrhosis",
    "HP:0000939": "Osteoporosis",
    "HP:0002014": "Diarrhea",
    "HP:0000822": "Hypertension",
}

#: (code, name, description, [(HPO id, frequency)])
DISEASES: list[tuple[str, str, str, list[tuple[str, float]]]] = [
    ("RD01", "Marfan syndrome",
     "A connective tissue disorder with tall, slender build and long fingers, dislocated eye lenses, "
     "and dilatation of the aortic root that can lead to dissection; joints are often lax and the spine curved.",
     [("HP:0001519", .8), ("HP:0001166", .8), ("HP:0001083", .6), ("HP:0002616", .7), ("HP:0001382", .5), ("HP:0002650", .4)]),
    ("RD02", "Neurofibromatosis type 1",
     "A tumour predisposition syndrome with multiple cafe-au-lait macules, benign nerve sheath tumours "
     "including plexiform neurofibromas, large head size, learning problems and curvature of the spine.",
     [("HP:0000957", .95), ("HP:0009732", .4), ("HP:0000256", .5), ("HP:0001249", .3), ("HP:0002650", .3), ("HP:0004322", .3)]),
    ("RD03", "Cystic fibrosis",
     "An inherited disorder of chloride transport causing thick secretions: repeated chest infections "
     "with dilated airways, pancreatic insufficiency with poor absorption of food, and poor growth in infancy.",
     [("HP:0002205", .9), ("HP:0002110", .7), ("HP:0002024", .8), ("HP:0001508", .6), ("HP:0000819", .2), ("HP:0001394", .1)]),
    ("RD04", "Duchenne muscular dystrophy",
     "A progressive muscle-wasting disease of boys: proximal weakness from early childhood, very high "
     "creatine kinase in blood, later heart muscle disease and failing breathing.",
     [("HP:0003324", .95), ("HP:0003236", .95), ("HP:0001644", .6), ("HP:0002093", .5), ("HP:0002650", .4), ("HP:0001249", .3)]),
    ("RD05", "Rett syndrome",
     "A neurodevelopmental disorder mainly in girls: normal early development followed by loss of "
     "acquired skills, small head, seizures, autistic features and abnormal movements.",
     [("HP:0002376", .95), ("HP:0000252", .7), ("HP:0001250", .6), ("HP:0000717", .5), ("HP:0001332", .3), ("HP:0002650", .4)]),
    ("RD06", "Prader-Willi syndrome",
     "A genetic syndrome with profound floppiness and feeding difficulty in infancy, then short stature, "
     "learning disability and undescended testes; diabetes can follow.",
     [("HP:0001252", .95), ("HP:0001508", .6), ("HP:0004322", .7), ("HP:0001249", .8), ("HP:0000028", .6), ("HP:0000819", .2)]),
    ("RD07", "Angelman syndrome",
     "A neurogenetic disorder with severe developmental delay, absent speech, unsteady gait, "
     "seizures and a small head.",
     [("HP:0001263", .95), ("HP:0001251", .8), ("HP:0001250", .8), ("HP:0000252", .7), ("HP:0001249", .9)]),
    ("RD08", "Turner syndrome",
     "A chromosomal condition in females with short stature, heart defects of the left outflow tract, "
     "kidney anomalies, underactive thyroid and hearing loss.",
     [("HP:0004322", .95), ("HP:0000821", .3), ("HP:0000407", .3), ("HP:0000822", .3), ("HP:0001631", .1)]),
    ("RD09", "Friedreich ataxia",
     "A progressive neurodegenerative disorder starting in adolescence: worsening limb and gait "
     "ataxia, thickened heart muscle, diabetes and spinal curvature.",
     [("HP:0001251", .95), ("HP:0001639", .7), ("HP:0000819", .2), ("HP:0002650", .6), ("HP:0000639", .2)]),
    ("RD10", "Huntington disease",
     "An adult-onset neurodegenerative disease with involuntary dance-like movements, dystonia, "
     "and progressive cognitive and psychiatric decline.",
     [("HP:0002072", .95), ("HP:0001332", .4), ("HP:0001249", .3), ("HP:0012378", .3)]),
    ("RD11", "Tuberous sclerosis complex",
     "A multisystem disorder with benign growths in brain, kidneys, heart and skin; infantile seizures, "
     "intellectual disability and autism are frequent, kidney cysts may impair kidney function.",
     [("HP:0001250", .85), ("HP:0001249", .5), ("HP:0000717", .4), ("HP:0000113", .3), ("HP:0000083", .1)]),
    ("RD12", "Osteogenesis imperfecta",
     "Brittle bone disease: fractures after minor trauma, blue-grey whites of the eyes, short stature, "
     "hearing loss in adulthood and low bone density.",
     [("HP:0002659", .95), ("HP:0000592", .7), ("HP:0004322", .5), ("HP:0000407", .4), ("HP:0000939", .8), ("HP:0001382", .4)]),
    ("RD13", "Gaucher disease",
     "A lysosomal storage disorder with enlarged spleen and liver, low blood counts with anaemia and "
     "bleeding, bone disease and fractures, fatigue.",
     [("HP:0001744", .95), ("HP:0002240", .8), ("HP:0001903", .6), ("HP:0001873", .7), ("HP:0002659", .3), ("HP:0012378", .5)]),
    ("RD14", "Fabry disease",
     "An X-linked lysosomal disorder with burning limb pain, protein in the urine progressing to kidney "
     "failure, thickened heart muscle and strokes at a young age.",
     [("HP:0000093", .7), ("HP:0000083", .5), ("HP:0001639", .5), ("HP:0001297", .2), ("HP:0000407", .3), ("HP:0002014", .3)]),
    ("RD15", "Pompe disease (infantile)",
     "A glycogen storage disease of infancy: profound floppiness, a massively thickened heart, "
     "enlarged liver, failure to thrive and breathing failure.",
     [("HP:0001252", .95), ("HP:0001639", .9), ("HP:0002240", .6), ("HP:0001508", .7), ("HP:0002093", .7), ("HP:0003236", .8)]),
    ("RD16", "Wilson disease",
     "A disorder of copper transport: liver disease from hepatitis to cirrhosis, with movement disorders "
     "such as tremor and dystonia and psychiatric change in young adults.",
     [("HP:0001394", .6), ("HP:0002240", .4), ("HP:0001332", .4), ("HP:0001903", .2), ("HP:0001744", .3)]),
    ("RD17", "Noonan syndrome",
     "A RASopathy with widely spaced eyes, short stature, congenital heart disease (pulmonary stenosis, "
     "septal defects, thick heart muscle), undescended testes and bleeding tendency.",
     [("HP:0000316", .8), ("HP:0004322", .7), ("HP:0001631", .3), ("HP:0001639", .2), ("HP:0000028", .6), ("HP:0001873", .2)]),
    ("RD18", "Bardet-Biedl syndrome",
     "A ciliopathy with progressive retinal degeneration and night blindness, extra digits, obesity, "
     "learning difficulty, kidney malformation and diabetes.",
     [("HP:0000510", .95), ("HP:0010442", .7), ("HP:0001249", .5), ("HP:0000113", .4), ("HP:0000819", .4), ("HP:0000083", .3)]),
    ("RD19", "MELAS syndrome",
     "A mitochondrial disease with stroke-like episodes in youth, seizures, headaches with vomiting, "
     "lactic acidosis, muscle weakness, short stature and deafness.",
     [("HP:0001297", .8), ("HP:0001250", .7), ("HP:0003128", .8), ("HP:0002315", .6), ("HP:0002013", .4), ("HP:0000407", .4), ("HP:0004322", .4)]),
    ("RD20", "Long QT syndrome",
     "An inherited disorder of cardiac repolarisation with a prolonged QT interval, fainting with "
     "exertion or emotion, and risk of sudden cardiac death.",
     [("HP:0001657", .95), ("HP:0001279", .6), ("HP:0000407", .05)]),
]

#: Background phenotypes any patient may carry (noise for the zero-shot task).
NOISE = ["HP:0012378", "HP:0002315", "HP:0000822", "HP:0002014", "HP:0001903", "HP:0000821"]
NOISE_RATE = 0.08
