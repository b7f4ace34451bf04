"""The built-in (query, documents) sets int8 quantization is calibrated and checked on.

Two disjoint sets of topics: NNCF measures activation ranges on the calibration set, and the
start-up self-check compares int8 with float32 on the check set, so the check is not graded on
the data the ranges were fitted to. Each topic has documents from relevant to unrelated, short
and long, and the topics span several languages and scripts (the default model,
bge-reranker-v2-m3, is multilingual). An operator replaces the calibration set with pairs of
their own domain (RERANKER_QUANTIZE_CALIBRATION); the check set stays this one.
"""

from __future__ import annotations

__all__ = ["CALIBRATION_TOPICS", "CHECK_TOPICS"]

Topic = tuple[str, tuple[str, ...]]

CALIBRATION_TOPICS: tuple[Topic, ...] = (
    ("What is the capital of France?", (
        "Paris is the capital and most populous city of France.",
        "Paris, on the Seine, has been the seat of the French government since the tenth century, apart from "
        "short periods; it is also the country's largest centre of finance, commerce and culture.",
        "Lyon is the third-largest city of France and known for its cuisine.",
        "Berlin is the capital of Germany.",
        "The Eiffel Tower was built for the 1889 World's Fair.",
        "Photosynthesis converts light energy into chemical energy.",
    )),
    ("how do vaccines train the immune system", (
        "Vaccines expose the immune system to a harmless piece or weakened form of a pathogen, so that it "
        "produces antibodies and memory cells without the person falling ill.",
        "After vaccination, memory B and T cells recognise the pathogen quickly on a later infection.",
        "Antibiotics kill bacteria but have no effect on viruses.",
        "The first vaccine, against smallpox, was developed by Edward Jenner in 1796.",
        "A balanced diet includes vegetables, grains and protein.",
        "The stock market fell sharply after the central bank raised interest rates.",
    )),
    ("Wie funktioniert eine Wärmepumpe?", (
        "Eine Wärmepumpe entzieht der Umgebung (Luft, Wasser oder Erdreich) Wärme und hebt sie mit einem "
        "Verdichter auf ein höheres Temperaturniveau, um Gebäude zu heizen.",
        "Das Kältemittel verdampft bei niedriger Temperatur, wird verdichtet und gibt beim Kondensieren Wärme ab.",
        "Ein Kühlschrank arbeitet nach demselben Prinzip, nur in umgekehrter Richtung.",
        "Solarzellen wandeln Sonnenlicht direkt in elektrischen Strom um.",
        "Berlin ist die Hauptstadt Deutschlands.",
        "Der Rhein fließt durch die Schweiz, Deutschland und die Niederlande.",
    )),
    ("¿Cuál es el río más largo de Sudamérica?", (
        "El río Amazonas es el más largo y caudaloso de Sudamérica; nace en los Andes peruanos y desemboca en "
        "el océano Atlántico.",
        "El Amazonas recorre Perú, Colombia y Brasil.",
        "El río Paraná es el segundo río más largo de Sudamérica.",
        "Madrid es la capital de España.",
        "La paella es un plato típico de Valencia.",
        "El aprendizaje profundo usa redes neuronales.",
    )),
    ("什么是机器学习？", (
        "机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不需要明确编程。",
        "深度学习是机器学习的一种方法，使用多层神经网络。",
        "监督学习使用带标签的数据训练模型。",
        "长城是中国古代的军事防御工程。",
        "北京是中华人民共和国的首都。",
        "今天的天气很好，适合去公园散步。",
    )),
    ("python read a file line by line", (
        "In Python, iterate over the file object: `with open(path) as f: for line in f: ...` reads one line at a "
        "time without loading the whole file into memory.",
        "file.readlines() returns every line of a file as a list.",
        "Rust and Python are programming languages with different trade-offs.",
        "To read a CSV file, use the csv module or pandas.read_csv.",
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Mount Everest is the highest mountain above sea level on Earth.",
    )),
    ("Quels sont les symptômes de la grippe ?", (
        "La grippe provoque une fièvre soudaine, des frissons, des douleurs musculaires, une toux sèche et une "
        "grande fatigue.",
        "Les symptômes de la grippe durent en général une semaine.",
        "Le rhume est une infection plus légère que la grippe.",
        "La tour Eiffel mesure environ 330 mètres.",
        "Le fromage de Roquefort est fabriqué avec du lait de brebis.",
        "Les marchés financiers ont reculé cette semaine.",
    )),
    ("東京の人口はどれくらいですか", (
        "東京都の人口は約1400万人で、日本の総人口の一割以上が住んでいます。",
        "首都圏全体では約3700万人が暮らしており、世界最大の都市圏です。",
        "大阪は日本で三番目に人口の多い都市です。",
        "富士山は日本で一番高い山です。",
        "寿司は日本の伝統的な料理です。",
        "猫がマットの上に座っている。",
    )),
)

CHECK_TOPICS: tuple[Topic, ...] = (
    ("Who wrote the theory of general relativity?", (
        "Albert Einstein published the general theory of relativity in 1915, describing gravity as the curvature "
        "of spacetime by mass and energy.",
        "General relativity predicts gravitational waves, first detected directly in 2015.",
        "Isaac Newton formulated the laws of motion and universal gravitation.",
        "Quantum mechanics describes physics at the scale of atoms.",
        "The Great Wall of China is visible from low orbit only under good conditions.",
        "Bread is made from flour, water, salt and yeast.",
        "Einstein received the Nobel Prize in Physics in 1921 for the photoelectric effect, not for relativity; "
        "the general theory had by then been confirmed by the 1919 solar eclipse observations led by Eddington, "
        "which made him famous worldwide.",
        "A reranker scores each query and document pair with a cross-encoder.",
    )),
    ("Welche Stadt ist die Hauptstadt von Österreich?", (
        "Wien ist die Hauptstadt und zugleich die größte Stadt Österreichs.",
        "Wien liegt an der Donau und hat knapp zwei Millionen Einwohner.",
        "Salzburg ist die Geburtsstadt von Wolfgang Amadeus Mozart.",
        "Bern ist die Bundesstadt der Schweiz.",
        "Die Alpen erstrecken sich über acht Länder.",
        "Ein neuronales Netz besteht aus Schichten von Neuronen.",
        "Kartoffeln wurden im 16. Jahrhundert aus Südamerika nach Europa gebracht.",
        "Der Fußballverein spielte am Samstag unentschieden.",
    )),
    ("¿Cómo se prepara una tortilla de patatas?", (
        "Para la tortilla de patatas se fríen patatas en rodajas y cebolla en aceite de oliva, se mezclan con "
        "huevos batidos y se cuaja la mezcla en la sartén por ambos lados.",
        "La tortilla española lleva huevos, patatas, aceite y sal; la cebolla es opcional.",
        "El gazpacho es una sopa fría de tomate.",
        "La paella se cocina con arroz y azafrán.",
        "Barcelona es la capital de Cataluña.",
        "Los planetas giran alrededor del Sol.",
        "El fútbol es el deporte más popular de España.",
        "La bolsa cerró con pérdidas.",
    )),
    ("光合作用需要什么条件？", (
        "光合作用需要光照、二氧化碳和水，在叶绿体中把光能转化为化学能，并释放氧气。",
        "叶绿素吸收红光和蓝光，为光合作用提供能量。",
        "植物在夜间进行呼吸作用。",
        "长江是中国最长的河流。",
        "熊猫主要吃竹子。",
        "上海是中国的经济中心之一。",
        "计算机由硬件和软件组成。",
        "今天股市下跌了。",
    )),
    ("best way to learn a new language", (
        "Practising every day, speaking with native speakers and reading material you enjoy are among the most "
        "effective ways to learn a new language.",
        "Spaced-repetition flashcards help you remember vocabulary over the long term.",
        "Children learn languages by immersion rather than grammar rules.",
        "Python is a popular first programming language.",
        "The Amazon rainforest produces a large share of the world's oxygen.",
        "Interest rates affect mortgage payments.",
        "Listening to podcasts and watching films with subtitles in the language you are learning trains your "
        "ear, and a short conversation with a tutor each week turns passive knowledge into active speech; "
        "most learners who keep this up for a year can hold everyday conversations.",
        "The cat sat on the mat and looked at the dog.",
    )),
    ("Pourquoi le ciel est-il bleu ?", (
        "Le ciel est bleu parce que les molécules de l'air diffusent davantage la lumière bleue, de courte "
        "longueur d'onde, que la lumière rouge : c'est la diffusion de Rayleigh.",
        "Au coucher du soleil, la lumière traverse plus d'atmosphère et le ciel devient rouge ou orangé.",
        "Les nuages sont blancs car les gouttelettes diffusent toutes les couleurs.",
        "La Loire est le plus long fleuve de France.",
        "Le croissant est une viennoiserie.",
        "Les impôts sur le revenu ont augmenté.",
        "Un ordinateur portable a une batterie.",
        "Le chat dort sur le canapé.",
    )),
)
