-- The table of the original two-tier-flask-app. Where a database already holds it, this
-- is a no-op and the next migration upgrades it in place, keeping every row and id.
CREATE TABLE IF NOT EXISTS messages (
    id INT AUTO_INCREMENT PRIMARY KEY,
    message TEXT
);
