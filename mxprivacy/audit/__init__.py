"""Privacy auditing: membership-inference attacks and empirical epsilon lower bounds.

An accountant's epsilon is an upper bound on the privacy loss. The attacks here measure
how well an adversary tells training members from non-members, and turn that into a
lower bound on epsilon that holds with a stated confidence. A lower bound above the
accountant's epsilon means a privacy bug. Everything but the Gluon helpers
(``mxprivacy.audit.gluon``) needs only numpy, scipy and scikit-learn.
"""
