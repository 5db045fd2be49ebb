//! The code tables of the synthetic data, taken from the distributions of the Synthea
//! fixtures (`tests/fixtures/synthea`): which codes occur, with which display text,
//! units and value ranges (observed minimum and maximum per LOINC code).
//!
//! No string here contains `"` or `\`, so the writer can copy them into JSON unescaped
//! (a test checks it).

/// A coded concept: code and display.
pub type Concept = (&'static str, &'static str);

/// A quantitative observation: LOINC code, display, category, UCUM unit, low, high.
pub type Measure = (&'static str, &'static str, &'static str, &'static str, f64, f64);

pub const LOINC: &str = "http://loinc.org";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub const CVX: &str = "http://hl7.org/fhir/sid/cvx";
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Vital signs taken at a check-up (blood pressure and smoking status are written apart).
pub const VITALS: &[Measure] = &[
    ("8302-2", "Body Height", "vital-signs", "cm", 48.5, 190.0),
    ("29463-7", "Body Weight", "vital-signs", "kg", 3.7, 110.0),
    ("39156-5", "Body Mass Index", "vital-signs", "kg/m2", 15.6, 34.0),
    ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", "vital-signs", "{score}", 0.0, 8.1),
];

/// Oral temperature, taken at some sick visits.
pub const TEMPERATURE: Measure = ("8331-1", "Oral temperature", "vital-signs", "Cel", 36.6, 39.4);

/// Blood pressure panel and its two components.
pub const BLOOD_PRESSURE: Concept = ("55284-4", "Blood Pressure");
pub const DIASTOLIC: Measure = ("8462-4", "Diastolic Blood Pressure", "vital-signs", "mm[Hg]", 60.0, 105.0);
pub const SYSTOLIC: Measure = ("8480-6", "Systolic Blood Pressure", "vital-signs", "mm[Hg]", 95.0, 180.0);

/// Smoking status and its answers (SNOMED).
pub const SMOKING: Concept = ("72166-2", "Tobacco smoking status NHIS");
pub const SMOKING_ANSWERS: &[Concept] =
    &[("266919005", "Never smoker"), ("8517006", "Former smoker"), ("449868002", "Current every day smoker")];

/// A laboratory panel: the DiagnosticReport code and the observations it reports (in
/// groups, so panels can share them).
pub struct Panel {
    pub code: Concept,
    pub results: &'static [&'static [Measure]],
}

const BMP: &[Measure] = &[
    ("2339-0", "Glucose", "laboratory", "mg/dL", 64.4, 130.0),
    ("6299-2", "Urea Nitrogen", "laboratory", "mg/dL", 7.1, 19.8),
    ("38483-4", "Creatinine", "laboratory", "mg/dL", 0.45, 3.5),
    ("49765-1", "Calcium", "laboratory", "mg/dL", 8.5, 10.2),
    ("2947-0", "Sodium", "laboratory", "mmol/L", 136.0, 144.0),
    ("6298-4", "Potassium", "laboratory", "mmol/L", 3.7, 5.2),
    ("2069-3", "Chloride", "laboratory", "mmol/L", 101.0, 111.0),
    ("20565-8", "Carbon Dioxide", "laboratory", "mmol/L", 20.0, 29.0),
];

/// The comprehensive panel: the basic panel's results, then these.
const CMP_EXTRA: &[Measure] = &[
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted", "laboratory", "mL/min/{1.73_m2}", 9.3, 159.0),
    ("2885-2", "Protein [Mass/volume] in Serum or Plasma", "laboratory", "g/dL", 61.0, 79.7),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "laboratory", "g/dL", 3.5, 5.5),
    ("10834-0", "Globulin [Mass/volume] in Serum by calculation", "laboratory", "g/L", 2.0, 3.5),
    ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 0.1, 1.2),
    ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "laboratory", "U/L", 21.2, 138.8),
    (
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "laboratory",
        "U/L",
        20.3,
        58.5,
    ),
    (
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "laboratory",
        "U/L",
        6.5,
        40.0,
    ),
];

const LIPIDS: &[Measure] = &[
    ("2093-3", "Total Cholesterol", "laboratory", "mg/dL", 152.6, 263.6),
    ("2571-8", "Triglycerides", "laboratory", "mg/dL", 100.0, 267.9),
    ("18262-6", "Low Density Lipoprotein Cholesterol", "laboratory", "mg/dL", 62.2, 184.6),
    ("2085-9", "High Density Lipoprotein Cholesterol", "laboratory", "mg/dL", 30.4, 79.7),
];

const CBC: &[Measure] = &[
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "laboratory", "10*3/uL", 3.5, 10.3),
    ("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "laboratory", "10*6/uL", 3.9, 5.5),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "laboratory", "g/dL", 11.6, 17.5),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "laboratory", "%", 35.0, 50.0),
    ("787-2", "MCV [Entitic volume] by Automated count", "laboratory", "fL", 80.0, 94.9),
    ("785-6", "MCH [Entitic mass] by Automated count", "laboratory", "pg", 27.0, 33.0),
    ("786-4", "MCHC [Mass/volume] by Automated count", "laboratory", "g/dL", 33.0, 36.0),
    ("21000-5", "Erythrocyte distribution width [Entitic volume] by Automated count", "laboratory", "fL", 39.0, 46.0),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "laboratory", "10*3/uL", 150.6, 447.4),
    (
        "32207-3",
        "Platelet distribution width [Entitic volume] in Blood by Automated count",
        "laboratory",
        "fL",
        151.8,
        517.2,
    ),
    ("32623-1", "Platelet mean volume [Entitic volume] in Blood by Automated count", "laboratory", "fL", 9.4, 12.3),
];

/// The panels, with the chance that a check-up orders each (from the fixtures' ratios
/// of DiagnosticReports to check-up encounters).
pub const PANELS: &[(f64, Panel)] = &[
    (0.4, Panel { code: ("51990-0", "Basic Metabolic Panel"), results: &[BMP] }),
    (0.4, Panel { code: ("57698-3", "Lipid Panel"), results: &[LIPIDS] }),
    (
        0.2,
        Panel {
            code: ("58410-2", "Complete blood count (hemogram) panel - Blood by Automated count"),
            results: &[CBC],
        },
    ),
    (
        0.15,
        Panel { code: ("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"), results: &[BMP, CMP_EXTRA] },
    ),
];

/// Hemoglobin A1c, measured alone at some check-ups.
pub const A1C: Measure = ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "laboratory", "%", 5.0, 7.5);

/// Encounter kinds: SNOMED type, class (v3 ActCode), weight, length in minutes.
pub struct EncounterKind {
    pub code: Concept,
    pub class: &'static str,
    pub weight: u32,
    pub minutes: u32,
}

pub const CHECK_UP: usize = 0;
pub const PRENATAL: usize = 5;
pub const EMERGENCY: usize = 7;
pub const INPATIENT: usize = 8;

pub const ENCOUNTERS: &[EncounterKind] = &[
    EncounterKind { code: ("185349003", "Encounter for check up (procedure)"), class: "AMB", weight: 40, minutes: 30 },
    EncounterKind { code: ("185345009", "Encounter for symptom"), class: "AMB", weight: 13, minutes: 20 },
    EncounterKind { code: ("390906007", "Follow-up encounter"), class: "AMB", weight: 9, minutes: 20 },
    EncounterKind { code: ("185347001", "Encounter for problem"), class: "AMB", weight: 11, minutes: 30 },
    EncounterKind { code: ("371883000", "Outpatient procedure"), class: "AMB", weight: 8, minutes: 60 },
    EncounterKind { code: ("424619006", "Prenatal visit"), class: "AMB", weight: 7, minutes: 30 },
    EncounterKind { code: ("698314001", "Consultation for treatment"), class: "AMB", weight: 4, minutes: 30 },
    EncounterKind {
        code: ("50849002", "Emergency room admission (procedure)"),
        class: "EMER",
        weight: 5,
        minutes: 180,
    },
    EncounterKind { code: ("183452005", "Encounter Inpatient"), class: "IMP", weight: 3, minutes: 4320 },
];

/// Conditions diagnosed at sick visits (acute, resolved) and found at check-ups (chronic).
pub const ACUTE_CONDITIONS: &[Concept] = &[
    ("444814009", "Viral sinusitis (disorder)"),
    ("195662009", "Acute viral pharyngitis (disorder)"),
    ("10509002", "Acute bronchitis (disorder)"),
    ("65363002", "Otitis media"),
    ("43878008", "Streptococcal sore throat (disorder)"),
    ("36971009", "Sinusitis (disorder)"),
    ("62106007", "Concussion with no loss of consciousness"),
    ("74400008", "Appendicitis"),
    ("39848009", "Whiplash injury to neck"),
    ("70704007", "Sprain of wrist"),
];

pub const CHRONIC_CONDITIONS: &[Concept] = &[
    ("15777000", "Prediabetes"),
    ("271737000", "Anemia (disorder)"),
    ("162864005", "Body mass index 30+ - obesity (finding)"),
    ("40055000", "Chronic sinusitis (disorder)"),
    ("38341003", "Hypertension"),
    ("55822004", "Hyperlipidemia"),
    ("44054006", "Diabetes"),
    ("49436004", "Atrial Fibrillation"),
    ("88805009", "Chronic congestive heart failure (disorder)"),
    ("239873007", "Osteoarthritis of knee"),
    ("367498001", "Seasonal allergic rhinitis"),
    ("124171000119105", "Chronic intractable migraine without aura"),
];

/// Procedures, by the kind of encounter they happen in.
pub const CHECK_UP_PROCEDURES: &[Concept] = &[
    ("428191000124101", "Documentation of current medications"),
    ("171207006", "Depression screening"),
    ("104091002", "Hemoglobin / Hematocrit / Platelet count"),
];

pub const SICK_VISIT_PROCEDURES: &[Concept] = &[
    ("117015009", "Throat culture (procedure)"),
    ("399208008", "Plain chest X-ray (procedure)"),
    ("127783003", "Spirometry (procedure)"),
    ("23426006", "Measurement of respiratory function (procedure)"),
    ("76601001", "Intramuscular injection"),
];

pub const OUTPATIENT_PROCEDURES: &[Concept] = &[
    ("180256009", "Subcutaneous immunotherapy"),
    ("73761001", "Colonoscopy"),
    ("180325003", "Electrical cardioversion"),
    ("40701008", "Echocardiography (procedure)"),
    ("65200003", "Insertion of intrauterine contraceptive device"),
];

pub const PRENATAL_PROCEDURES: &[Concept] = &[
    ("274804006", "Evaluation of uterine fundal height"),
    ("225158009", "Auscultation of the fetal heart"),
    ("252160004", "Standard pregnancy test"),
    ("169230002", "Ultrasound scan for fetal viability"),
];

pub const HOSPITAL_PROCEDURES: &[Concept] = &[
    ("80146002", "Appendectomy"),
    ("232717009", "Coronary artery bypass grafting"),
    ("415070008", "Percutaneous coronary intervention"),
    ("609588000", "Total knee replacement"),
    ("399208008", "Plain chest X-ray (procedure)"),
];

/// Medications: for acute conditions, and for chronic ones.
pub const ACUTE_MEDICATIONS: &[Concept] = &[
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
    ("562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet"),
    ("849574", "Naproxen sodium 220 MG Oral Tablet"),
    ("198014", "Naproxen 500 MG Oral Tablet"),
    ("308182", "Amoxicillin 250 MG Oral Capsule"),
    (
        "1043400",
        "Acetaminophen 21.7 MG/ML / Dextromethorphan Hydrobromide 1 MG/ML / doxylamine succinate 0.417 MG/ML Oral Solution",
    ),
];

pub const CHRONIC_MEDICATIONS: &[Concept] = &[
    ("316672", "Simvistatin 10 MG"),
    ("316049", "Hydrochlorothiazide 25 MG"),
    ("866414", "24 HR metoprolol succinate 100 MG Extended Release Oral Tablet [Toprol]"),
    ("315971", "Lasix 40mg"),
    ("855332", "Warfarin Sodium 5 MG Oral Tablet"),
    ("309362", "Clopidogrel 75 MG Oral Tablet"),
    ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("2001499", "Vitamin B 12 5 MG/ML Injectable Solution"),
];

/// Vaccines (CVX): influenza at most check-ups, another one at some.
pub const FLU_VACCINE: Concept = ("140", "Influenza, seasonal, injectable, preservative free");
pub const OTHER_VACCINES: &[Concept] = &[
    ("113", "Td (adult) preservative free"),
    ("114", "meningococcal MCV4P"),
    ("10", "IPV"),
    ("62", "HPV, quadrivalent"),
    ("121", "zoster"),
    ("20", "DTaP"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("43", "Hep B, adult"),
    ("08", "Hep B, adolescent or pediatric"),
    ("49", "Hib (PRP-OMP)"),
    ("03", "MMR"),
];

pub const FAMILY_NAMES: &[&str] = &[
    "Schaden",
    "Heidenreich",
    "Schneider",
    "Kuhlman",
    "Bernier",
    "Wisozk",
    "Hartmann",
    "Okuneva",
    "Stracke",
    "Lind",
    "Murphy",
    "Johnson",
    "Smith",
    "Garcia",
    "Nguyen",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "O'Keefe",
    "Müller",
];

pub const MALE_GIVEN: &[&str] = &[
    "Andy",
    "Andre",
    "James",
    "John",
    "Robert",
    "Michael",
    "William",
    "David",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "Steven",
    "Paul",
    "Andrew",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "José",
    "Luis",
    "Wei",
    "Hiroshi",
];

pub const FEMALE_GIVEN: &[&str] = &[
    "Anissa",
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Nancy",
    "Lisa",
    "Betty",
    "Margaret",
    "Sandra",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Dorothy",
    "Carol",
    "Amanda",
    "Melissa",
    "Deborah",
    "Zoë",
    "María",
    "Mei",
    "Yuki",
];

pub const STREETS: &[&str] = &[
    "Mills Brook",
    "Highland Avenue",
    "Main Street",
    "Elm Street",
    "Maple Avenue",
    "Oak Street",
    "Pine Road",
    "Cedar Lane",
    "Washington Street",
    "Lake Drive",
    "Hill Road",
    "Park Avenue",
    "River Road",
    "Church Street",
];

/// Massachusetts towns with a postal code.
pub const CITIES: &[(&str, &str)] = &[
    ("Boston", "02108"),
    ("Worcester", "01608"),
    ("Springfield", "01103"),
    ("Cambridge", "02139"),
    ("Lowell", "01852"),
    ("Brockton", "02301"),
    ("Quincy", "02169"),
    ("Lynn", "01901"),
    ("Reading", "01801"),
    ("Peabody", "01960"),
    ("Winchester", "01890"),
    ("Salem", "01970"),
    ("Framingham", "01701"),
    ("Newton", "02458"),
    ("Plymouth", "02360"),
];

/// OMB race categories (code, display).
pub const RACES: &[Concept] = &[
    ("2106-3", "White"),
    ("2054-5", "Black or African American"),
    ("2028-9", "Asian"),
    ("1002-5", "American Indian or Alaska Native"),
    ("2131-1", "Other"),
];

pub const HOSPITAL_WORDS: &[&str] = &[
    "General",
    "Memorial",
    "Community",
    "Regional",
    "University",
    "Saint Mary",
    "Valley",
    "Harbor",
    "North Shore",
    "Riverside",
];
