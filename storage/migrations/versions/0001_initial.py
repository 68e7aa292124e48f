"""Initial schema: jobs, candidates, scores, generations, calibrations with their models and fits.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('calibrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('tasks', sa.JSON(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('fit_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibrations')),
    sa.UniqueConstraint('name', name=op.f('uq_calibrations_name'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('output_dir', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('name', name=op.f('uq_jobs_name'))
    )
    op.create_table('calibration_fits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('calibration_id', sa.Integer(), nullable=False),
    sa.Column('fit_version', sa.Integer(), nullable=False),
    sa.Column('irt_params', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['calibration_id'], ['calibrations.id'], name=op.f('fk_calibration_fits_calibration_id_calibrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibration_fits')),
    sa.UniqueConstraint('calibration_id', 'fit_version', name=op.f('uq_calibration_fits_calibration_id_fit_version'))
    )
    op.create_table('calibration_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('calibration_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('recipe', sa.JSON(), nullable=True),
    sa.Column('responses', sa.JSON(), nullable=False),
    sa.Column('accuracy', sa.JSON(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['calibration_id'], ['calibrations.id'], name=op.f('fk_calibration_models_calibration_id_calibrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibration_models')),
    sa.UniqueConstraint('calibration_id', 'label', name=op.f('uq_calibration_models_calibration_id_label'))
    )
    op.create_table('candidates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('genome', sa.JSON(), nullable=False),
    sa.Column('recipe', sa.JSON(), nullable=False),
    sa.Column('recipe_hash', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('build_seconds', sa.Float(), nullable=True),
    sa.Column('eval_seconds', sa.Float(), nullable=True),
    sa.Column('overhead_seconds', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('cached_from', sa.Integer(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['cached_from'], ['candidates.id'], name=op.f('fk_candidates_cached_from_candidates'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_candidates_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_candidates')),
    sa.UniqueConstraint('job_id', 'generation', 'index', name=op.f('uq_candidates_job_id_generation_index'))
    )
    op.create_index('ix_candidates_job_id_recipe_hash', 'candidates', ['job_id', 'recipe_hash'])

    op.create_table('generations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('optimizer_state', sa.LargeBinary(), nullable=False),
    sa.Column('front_candidate_ids', sa.JSON(), nullable=False),
    sa.Column('hypervolume', sa.Float(), nullable=True),
    sa.Column('committed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_generations_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generations')),
    sa.UniqueConstraint('job_id', 'generation', name=op.f('uq_generations_job_id_generation'))
    )
    op.create_table('scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=False),
    sa.Column('objective', sa.String(length=255), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('estimated', sa.Float(), nullable=True),
    sa.Column('anchor_accuracy', sa.Float(), nullable=True),
    sa.Column('full', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['candidate_id'], ['candidates.id'], name=op.f('fk_scores_candidate_id_candidates'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scores')),
    sa.UniqueConstraint('candidate_id', 'objective', 'split', name=op.f('uq_scores_candidate_id_objective_split'))
    )


def downgrade() -> None:
    op.drop_table('scores')
    op.drop_table('generations')
    op.drop_index('ix_candidates_job_id_recipe_hash', table_name='candidates')
    op.drop_table('candidates')
    op.drop_table('calibration_models')
    op.drop_table('calibration_fits')
    op.drop_table('jobs')
    op.drop_table('calibrations')
